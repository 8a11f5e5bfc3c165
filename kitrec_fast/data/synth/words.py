"""Word pools for titles, names, summaries and categories."""

from __future__ import annotations

# Word pools. Accents, curly quotes, em dashes and CJK are deliberate: the tokenizer and every
# text path downstream must survive them.

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

FIRST = ["Anna", "James", "Zoë", "Renée", "José", "Ólafur", "Anaïs", "Søren", "Chloé", "Jürgen",
          "François", "Åsa", "Maya", "Daniel", "Grace", "Lucas", "Nora", "Tomás", "Elena", "Marcus",
          "Ingrid", "Kofi", "Priya", "Hiro", "Amélie", "Mateo", "Leila", "Oskar", "Clara", "Rafael",
          "Bettina", "Desmond", "Yara", "Felix", "Imogen", "Noé", "Saoirse", "Emeka", "Linnéa", "Ruth"]
LAST = ["Marchetti", "Núñez", "Müller", "Lefèvre", "Østergaard", "Çelik", "Kowalczyk", "Brontë",
         "Hale", "Whitaker", "Okafor", "Lindqvist", "Moreau", "Castillo", "Fairbanks", "O’Connell",
         "Vasquez", "Hartmann", "Sørensen", "Delacroix", "Ashworth", "Nakamura", "Ferreira", "Quinn",
         "Abernathy", "Iglesias", "Petrović", "Rhodes", "Valdés", "Kingsley", "Duarte", "Mbeki"]
CJK_NAMES = ["山田 花子", "李 明", "김 지수", "佐藤 健", "王 芳", "박 서준"]
ADJ = ["Electric", "Silent", "Golden", "Broken", "Midnight", "Hollow", "Crimson", "Wild", "Quiet",
        "Northern", "Burning", "Velvet", "Distant", "Lonely", "Bright", "Restless", "Paper", "Secret",
        "Endless", "Fading", "Sacred", "Wandering", "Frozen", "Hidden", "Last", "Little", "Lost",
        "Neon", "Open", "Starlit", "Bittersweet", "Ashen", "Tender", "Savage", "Gentle", "Iron",
        "Scarlet", "Weightless", "Borrowed", "Painted"]
NOUN = ["Horizon", "River", "Garden", "Heart", "Road", "City", "Summer", "Night", "Fire", "Ocean",
         "Mirror", "Winter", "Shadow", "Kingdom", "Light", "Harbor", "Machine", "Letters", "Hours",
         "Echoes", "Stars", "Season", "Bridge", "Island", "Storm", "Crown", "Orchard", "Signal",
         "Tide", "Ghosts", "Wolves", "Lanterns", "Atlas", "Cathedral", "Frontier", "Daughters",
         "Compass", "Meadow", "Archive", "Lullaby", "Engine", "Thunder", "Sparrow", "Covenant"]
PLACE = ["Avalon", "Montréal", "Kyoto", "São Paulo", "Reykjavík", "Marrakesh", "the North",
          "Blue Hill", "Brooklyn", "Córdoba", "Zürich", "Galway", "Nashville", "Lagos", "Kraków",
          "the Lowlands", "Valparaíso", "Tromsø", "New Orleans", "Lisbon"]
CJK_TITLES = {
    "music": ["夜に駆ける", "月光の詩", "春の雨", "東京の夜", "사랑의 노래", "花様年華", "青い鳥", "星空のメロディ"],
    "movies": ["千年の森", "花様年華", "風の谷の物語", "東京物語 (リマスター版)", "밤의 여행자", "月下の約束", "夏の終わり"],
    "books": ["ノルウェイの夜", "雪国の手紙", "三体の記憶", "82년생의 일기", "紅楼の夢"],
}

# (top category, leaf); leaves double as genre labels in the reasoning text.
GENRES: dict[str, list[tuple[str, str]]] = {
    "books": [
        ("Literature & Fiction", "Historical Fiction"), ("Literature & Fiction", "Literary Fiction"),
        ("Mystery, Thriller & Suspense", "Thrillers & Suspense"), ("Mystery, Thriller & Suspense", "Cozy Mystery"),
        ("Science Fiction & Fantasy", "Science Fiction"), ("Science Fiction & Fantasy", "Epic Fantasy"),
        ("Romance", "Contemporary Romance"), ("Biographies & Memoirs", "Arts & Literature"),
        ("History", "World History"), ("Self-Help", "Personal Transformation"),
        ("Teen & Young Adult", "Coming of Age"), ("Arts & Photography", "Music History"),
        ("Religion & Spirituality", "Spirituality"), ("Humor & Entertainment", "Humor"),
        ("Children’s Books", "Classics"),
    ],
    "music": [
        ("Rock", "Classic Rock"), ("Rock", "Indie & Lo-Fi"), ("Alternative Rock", "Indie Rock"),
        ("Pop", "Adult Contemporary"), ("Jazz", "Cool Jazz"), ("Classical", "Symphonies"),
        ("Country", "Americana"), ("Folk", "Contemporary Folk"), ("R&B", "Neo-Soul"),
        ("Dance & Electronic", "Ambient"), ("Soundtracks", "Film Scores"), ("Metal", "Progressive Metal"),
        ("Blues", "Delta Blues"), ("Christian", "Gospel"), ("International Music", "J-Pop"),
        ("Rap & Hip-Hop", "East Coast"),
    ],
    "movies": [
        ("Genre for Featured Categories", "Drama"), ("Genre for Featured Categories", "Science Fiction"),
        ("Genre for Featured Categories", "Fantasy"), ("Genre for Featured Categories", "Mystery & Suspense"),
        ("Genre for Featured Categories", "Romance"), ("Genre for Featured Categories", "Comedy"),
        ("Genre for Featured Categories", "Documentary"), ("Genre for Featured Categories", "Action & Adventure"),
        ("Genre for Featured Categories", "Kids & Family"), ("Genre for Featured Categories", "Horror"),
        ("Genre for Featured Categories", "Anime"), ("TV", "Drama Series"), ("TV", "British Television"),
        ("Music Videos & Concerts", "Concerts"), ("Genre for Featured Categories", "Faith & Spirituality"),
        ("Genre for Featured Categories", "Westerns"),
    ],
}
ROOT = {"books": "Books", "music": "CDs & Vinyl", "movies": "Movies & TV"}

# Book leaf -> target leaves it plausibly transfers to; drives both user profiles and reasoning.
AFFINITY: dict[str, dict[str, list[str]]] = {
    "music": {
        "Historical Fiction": ["Symphonies", "Contemporary Folk", "Film Scores"],
        "Literary Fiction": ["Indie Rock", "Contemporary Folk", "Cool Jazz"],
        "Thrillers & Suspense": ["Film Scores", "Progressive Metal", "East Coast"],
        "Cozy Mystery": ["Adult Contemporary", "Cool Jazz", "Americana"],
        "Science Fiction": ["Ambient", "Film Scores", "Progressive Metal"],
        "Epic Fantasy": ["Film Scores", "Symphonies", "Progressive Metal"],
        "Contemporary Romance": ["Adult Contemporary", "Neo-Soul", "J-Pop"],
        "Arts & Literature": ["Classic Rock", "Cool Jazz", "Delta Blues"],
        "World History": ["Symphonies", "Delta Blues", "Classic Rock"],
        "Personal Transformation": ["Ambient", "Gospel", "Adult Contemporary"],
        "Coming of Age": ["Indie & Lo-Fi", "Indie Rock", "J-Pop"],
        "Music History": ["Classic Rock", "Delta Blues", "Cool Jazz"],
        "Spirituality": ["Gospel", "Ambient", "Contemporary Folk"],
        "Humor": ["Indie & Lo-Fi", "Americana", "East Coast"],
        "Classics": ["Symphonies", "Adult Contemporary", "Contemporary Folk"],
    },
    "movies": {
        "Historical Fiction": ["Drama", "Westerns", "British Television"],
        "Literary Fiction": ["Drama", "Romance", "British Television"],
        "Thrillers & Suspense": ["Mystery & Suspense", "Action & Adventure", "Horror"],
        "Cozy Mystery": ["Mystery & Suspense", "British Television", "Comedy"],
        "Science Fiction": ["Science Fiction", "Anime", "Action & Adventure"],
        "Epic Fantasy": ["Fantasy", "Anime", "Action & Adventure"],
        "Contemporary Romance": ["Romance", "Comedy", "Drama Series"],
        "Arts & Literature": ["Documentary", "Drama", "Concerts"],
        "World History": ["Documentary", "Westerns", "Drama"],
        "Personal Transformation": ["Documentary", "Faith & Spirituality", "Drama"],
        "Coming of Age": ["Drama Series", "Comedy", "Anime"],
        "Music History": ["Concerts", "Documentary", "Drama"],
        "Spirituality": ["Faith & Spirituality", "Documentary", "Kids & Family"],
        "Humor": ["Comedy", "Kids & Family", "Drama Series"],
        "Classics": ["Kids & Family", "Fantasy", "Drama"],
    },
}

TITLE_PATTERNS = {
    "music": ["{A} {N}", "The {N} Sessions", "{N} & {N2}", "Songs from the {A} {N}", "{A} {N} (Remastered)",
              "{N} — Live at {P}", "{A} {N} [Deluxe Edition]", "{N}, Vol. {k}", "Greatest Hits: {A} {N}",
              "{A} {NS}", "Letters to {P}", "{A} & {A2}"],
    "movies": ["The {A} {N}", "{N} of the {A} {N2}", "{A} {N} [Blu-ray]", "{N}: Season {k}",
               "{A} {N} (Director’s Cut)", "Return to {P}", "The {N} of {P} [DVD]", "{A} {N}",
               "{N} — The Complete Series", "Murder in {P}", "The {A} {NS}: Collector’s Edition"],
    "books": ["The {N} of {P}: A Novel", "{A} {N}", "The {A} {N} ({N2} Trilogy Book {k})",
              "{N} & {N2}: A Memoir", "The {N}keeper’s Daughter", "A {A} {N} in {P}",
              "{A} {N}: Stories", "The Last {N} of {P}", "After the {N}", "{N}: A History of {P}"],
}
MUSIC_FORMS = ["ballad", "anthem", "lullaby", "instrumental", "suite", "duet", "hymn", "jam", "waltz", "sketch"]
PLURAL = {"lullaby": "lullabies", "waltz": "waltzes", "sketch": "sketches"}
TEXTURES = ["warm analog synths", "fingerpicked guitar", "brushed drums", "lush string arrangements",
             "gritty slide guitar", "close vocal harmonies", "muted trumpet", "layered field recordings",
             "a walking upright bass", "tape-saturated piano", "choral swells", "fuzzed-out riffs",
             "sparse electric piano", "booming 808s", "pedal steel", "a horn section"]
MOODS = ["brooding", "joyful", "melancholy", "restless", "intimate", "cinematic", "playful", "defiant",
          "hushed", "euphoric", "wistful", "hypnotic", "tender", "raw", "luminous"]
QUALITY = ["crisp", "meticulous", "lo-fi", "expansive", "understated", "lavish", "unpolished", "pristine"]
THEMES = ["grief and second chances", "a family secret", "small-town ambition", "a disputed inheritance",
           "first love", "an unlikely friendship", "survival at the edge of the map", "a cold case",
           "faith under pressure", "the cost of fame", "exile and return", "a heist gone wrong",
           "a lighthouse keeper’s last winter", "two rival chefs", "a city on the brink of revolution"]
PRAISE = ["“a triumph”", "“quietly devastating”", "“impossible to put down”", "“the year’s best surprise”",
           "“funny, sharp and humane”", "“a masterclass in atmosphere”", "“gorgeous — and unsettling”"]

SUMMARY = {
    "music": [
        "{W}’s {ord} studio album pairs {T} with {T2}.",
        "Recorded in {P} over {k} weeks, it moves from {M} {FS} to {M2} {FS2}.",
        "Critics praised the {Q} production and the single “{A} {N}”.",
        "Includes {k} bonus tracks, liner notes and a newly remastered mix.",
        "{AM} collection of {FS} — equal parts {T} and {T2}.",
        "Fans of {G} will recognise the {Q} songwriting, but the second half turns {M}.",
        "The reissue restores the original running order and adds {am} {F} recorded live in {P}.",
        "Produced by {W2}, the record leans on {T} and a {Q} low end.",
        "{W} wrote most of these songs after a year of touring; the result is {M} and direct.",
        "Its closing track, “{N} in {P}”, became a cult favourite on late-night radio.",
    ],
    "movies": [
        "{AM} story about {TH}, set in {P}.",
        "{W} stars as a {role} drawn into {TH} — {praise} according to critics.",
        "Directed by {W2}, the film balances {M} set pieces with {M2} character moments.",
        "Special features include a commentary track, {k} deleted scenes and a making-of featurette.",
        "This {Q} restoration presents the film in its original aspect ratio with a new 5.1 mix.",
        "Over {k} episodes the series follows {TH}, shifting from {M} comedy to {M2} drama.",
        "When a {role} returns to {P}, old loyalties are tested and {TH} comes to light.",
        "Winner of {k} festival awards; {praise}.",
        "Shot on location in {P}, it remains {am} favourite of {G} fans.",
        "Languages: English, Français, Español; subtitles included. Runtime approx. {mins} minutes.",
    ],
    "books": [
        "{W} returns with {am} novel about {TH}.",
        "Set in {P}, this {G} tale follows a {role} who must confront {TH}.",
        "{praise} — The New York Times Book Review.",
        "{AQ}, {M} exploration of {TH}, told across {k} decades.",
        "From the bestselling author of “{A} {N}”, a story of {TH} and the people it changes.",
        "Book {k} of the acclaimed series; readers call it {praise}.",
        "Part memoir, part field guide, it is {M} and {M2} by turns.",
        "Includes a reading group guide and an interview with {W}.",
    ],
}
# Sentences per summary (1-4); tuned so full prompts land at ~5-8k Qwen3 tokens. Movies lines are
# longer because 43% of Movies candidates are short metadata-less lines.
SUMMARY_WEIGHTS = {"books": (7, 3, 0, 0), "music": (9, 1, 0, 0), "movies": (3, 4, 2, 1)}
ROLES = ["retired detective", "young cellist", "disgraced journalist", "widowed farmer", "ship’s doctor",
          "reluctant heir", "night-shift nurse", "street magician", "marine biologist", "school teacher"]
ORD = ["debut", "second", "third", "fourth", "fifth", "long-awaited sixth"]
