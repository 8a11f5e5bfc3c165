from kitrec_fast.cli import main

raise SystemExit(main())
