"""Content of the echo dataset: instruction prefixes and content pools (this project's own wording).

Pool sizes are close to the upstream's (spec UPSTREAM_DATAGEN.md, 3.2) so that dataset sizes per
mode match; none of the lists repeats an item. Procedural gibberish is added in datagen/echo.py.
"""

from __future__ import annotations

# Item lists stay packed, several per line.
# fmt: off

PREFIXES_EN = (
    "Say:", "Say exactly:", "Say the word:", "Say this:", "Please say:", "Just say:", "Now say:",
    "Repeat:", "Repeat this:", "Repeat exactly:", "Repeat after me:", "Repeat back:", "Please repeat:",
    "Please repeat exactly:", "Echo:", "Echo back:", "Echo exactly:", "Echo this:", "Output:",
    "Output exactly:", "Output only:", "Output the following:", "Write:", "Write exactly:",
    "Write down:", "Type:", "Type exactly:", "Type out:", "Print:", "Print exactly:", "Return:",
    "Return exactly:", "Reply with:", "Reply with only:", "Respond with:", "Respond with exactly:",
    "Answer with:", "Give me:", "Copy:", "Copy this:", "Copy exactly:", "Could you say:",
    "Can you repeat:",
)

PREFIXES_DE = (
    "Sag:", "Sage:", "Sag genau:", "Sag das Wort:", "Sag bitte:", "Bitte sag:", "Bitte sage genau:",
    "Wiederhole:", "Wiederhole genau:", "Wiederhole dies:", "Wiederhole bitte:", "Bitte wiederhole:",
    "Bitte wiederhole genau:", "Sprich mir nach:", "Schreibe:", "Schreib:", "Schreibe genau:",
    "Bitte schreibe:", "Gib aus:", "Gib genau aus:", "Bitte gib aus:", "Ausgabe:", "Antworte mit:",
    "Antworte nur mit:", "Bitte antworte mit:", "Deine Antwort:", "Deine Antwort lautet:", "Tippe:",
    "Tippe genau:", "Kopiere:", "Kopiere genau:", "Gib zurück:", "Könntest du sagen:",
    "Würdest du bitte schreiben:",
)

WORDS_EN = (
    "Apple", "Banana", "Cherry", "Grape", "Lemon", "Mango", "Peach", "Pear", "Plum", "Melon",
    "Orange", "Tiger", "Lion", "Zebra", "Horse", "Rabbit", "Eagle", "Dolphin", "Penguin", "Turtle",
    "Monkey", "Panda", "Rocket", "Planet", "Galaxy", "Comet", "Moon", "Star", "Ocean", "River",
    "Mountain", "Forest", "Desert", "Island", "Valley", "Thunder", "Rain", "Snow", "Wind", "Cloud",
    "Sunshine", "Red", "Blue", "Green", "Purple", "Yellow", "Silver", "Golden", "House", "Garden",
    "Window", "Door", "Table", "Chair", "Pencil", "Paper", "Book", "Library", "Music", "Guitar",
    "Piano", "Violin", "Coffee", "Tea", "Bread", "Butter", "Cheese", "Pizza", "Pasta", "Sugar",
    "Computer", "Keyboard", "Monitor", "Server", "Network", "Python", "Database", "Robot", "Engine",
    "Bridge", "Castle", "Village", "Harbor", "Lantern", "Compass", "Journey", "Friend", "Family",
    "Teacher", "Doctor", "Pilot", "Artist", "Hello", "Goodbye", "Welcome", "Thanks",
)

PHRASES_EN = (
    "Hello world", "Testing 123", "Good morning", "Good night", "Thank you", "See you later",
    "Nice to meet you", "How are you", "Open the door", "Close the window", "Turn left", "Turn right",
    "Stop here", "Go ahead", "Well done", "Happy birthday", "Merry Christmas", "Happy new year",
    "Once upon a time", "Time flies", "Red and blue", "Black and white", "Salt and pepper",
    "Rock and roll", "Step by step", "One two three", "A B C", "X Y Z", "The quick fox", "Blue sky",
    "Green apple", "Big red car", "Small white dog", "Cold water", "Hot coffee", "Fresh bread",
    "Quiet room", "Bright light", "Long road home", "Fast train", "Slow boat", "Deep blue sea",
    "Clear night sky", "Sunny day", "Rainy Monday", "MyPT is ready", "All systems go",
    "Mission complete", "Access granted", "Loading data",
)

# Echoed verbatim, never computed: `3 x 3` answers `3 x 3`.
NUMBERS_AND_CODES = (
    "0", "1", "7", "10", "13", "21", "42", "64", "99", "100", "256", "404", "500", "777", "1000",
    "1024", "2024", "2026", "9999", "12345", "007", "0042", "3.14", "2.71", "0.5", "-1", "-42",
    "1,000", "10%", "$5", "€20", "3/4", "1 + 1", "2 + 3", "5 - 2", "3 x 3", "10 / 2", "7 * 6",
    "ID-001", "ID-123", "UID_042", "REF-2026-07", "CH-2026-01", "v1.2.3", "A1", "B12", "X9",
    "Room 101", "Gate 7", "Flight 815", "Order #4521", "Case 12-B", "+41 44 123 45 67",
    "192.168.0.1", "08:30", "2026-01-15",
)

SENTENCES_EN = (
    "The cat sat on the mat.", "I like green tea.", "The sun is shining today.", "We meet at noon.",
    "This is a test.", "Please close the door.", "The train leaves at eight.", "My name is MyPT.",
    "Water boils at one hundred degrees.", "The meeting is cancelled.", "Birds fly south in winter.",
    "She reads a book every week.", "The answer is correct.", "Today is a good day.",
    "Keep it short and simple.",
)

WORDS_DE = (
    "Hallo", "Tschüss", "Danke", "Bitte", "Ja", "Nein", "Apfel", "Birne", "Kirsche", "Banane",
    "Traube", "Zitrone", "Erdbeere", "Hund", "Katze", "Maus", "Vogel", "Pferd", "Kuh", "Schaf",
    "Fuchs", "Bär", "Igel", "Eule", "Haus", "Garten", "Fenster", "Tür", "Tisch", "Stuhl", "Lampe",
    "Bett", "Küche", "Schlüssel", "Buch", "Brief", "Zeitung", "Stift", "Schule", "Lehrer", "Freund",
    "Familie", "Mutter", "Vater", "Bruder", "Schwester", "Kind", "Baum", "Blume", "Wald", "Wiese",
    "Berg", "Fluss", "See", "Meer", "Insel", "Himmel", "Sonne", "Mond", "Stern", "Regen", "Schnee",
    "Wolke", "Gewitter", "Frühling", "Sommer", "Herbst", "Winter", "Montag", "Freitag", "Sonntag",
    "Brot", "Käse", "Butter", "Milch", "Kaffee", "Wasser", "Suppe", "Kuchen", "Straße", "Brücke",
    "Bahnhof", "Flughafen", "Zug", "Auto", "Fahrrad", "Größe", "Überraschung",
)

PHRASES_DE = (
    "Guten Morgen", "Guten Tag", "Guten Abend", "Gute Nacht", "Bis später", "Bis morgen",
    "Vielen Dank", "Danke schön", "Bitte schön", "Wie geht es dir", "Alles klar", "Kein Problem",
    "Viel Glück", "Herzlichen Glückwunsch", "Frohe Weihnachten", "Gutes neues Jahr",
    "Schönes Wochenende", "Auf Wiedersehen", "Hallo Welt", "Test eins zwei drei", "Rot und Blau",
    "Schwarz und Weiß", "Salz und Pfeffer", "Schritt für Schritt", "Eins zwei drei", "A B C", "X Y Z",
    "Der schnelle Fuchs", "Blauer Himmel", "Grüner Apfel", "Kaltes Wasser", "Heißer Kaffee",
    "Frisches Brot", "Stiller Raum", "Helles Licht", "Langer Weg", "Schneller Zug", "Tiefes Meer",
    "Sonniger Tag", "MyPT ist bereit", "Zugang gewährt", "Daten werden geladen",
)

SENTENCES_DE = (
    "Die Katze schläft auf dem Sofa.", "Ich trinke gern Tee.", "Die Sonne scheint heute.",
    "Wir treffen uns um zwölf.", "Das ist ein Test.", "Bitte schließe die Tür.",
    "Der Zug fährt um acht Uhr.", "Mein Name ist MyPT.", "Das Wetter ist schön.",
    "Die Besprechung fällt aus.", "Der Hund spielt im Garten.", "Sie liest jeden Tag ein Buch.",
    "Die Antwort ist richtig.", "Heute ist ein guter Tag.", "Das System ist bereit.",
    "Übung macht den Meister.", "Morgenstund hat Gold im Mund.", "Aller Anfang ist schwer.",
    "Ende gut, alles gut.", "Der Apfel fällt nicht weit vom Stamm.", "Ohne Fleiß kein Preis.",
)

# Hand-written gibberish, one tuple per kind of nonsense the model must copy rather than recall.
GIBBERISH_INVENTED = (
    "Blurpix", "Zanthor", "Quexling", "Flimbat", "Grobnak", "Snorfle", "Wibblex", "Plonkit",
    "Zorblat", "Krandle", "Miffnop", "Trazzle", "Vorpex", "Glimmox", "Drubbin", "Skaventh",
    "Nuxbor", "Pragglet", "Yomtrip", "Fezzwick", "Quorbin", "Blixen", "Drazzle", "Frumpel",
)
GIBBERISH_KEYBOARD = ("qwerty", "asdfgh", "zxcvbn", "poiuyt", "lkjhgf", "mnbvcx", "qwertz", "ytrewq")
GIBBERISH_CODES = ("Zap123", "Qux789", "Vek456", "Blo-qk", "Trn_vz", "Kip.ox", "Fam;ud", "Gro:ez")
GIBBERISH_LEET = ("bl0rp", "zn4x", "fl1mz", "kr4nk", "qu3x", "pr1zz", "gl0mp", "sn0rf")
GIBBERISH_CAPS = ("ZORB", "KRAX", "FLUM", "QUIB", "SNAZ", "BROK", "PLIM", "WUMP")
GIBBERISH_ALTERNATING = (
    "bLuRpIx", "zAnThOr", "QuExLiNg", "fLiMbAt", "gRoBnAk", "sNoRfLe", "wIbBlEx", "pLoNkIt",
)
GIBBERISH_JOINED = (
    "zorb-krad", "miff_nop", "traz.zle", "vor;pex", "glim:mox", "drub-bin", "skav_enth", "nux.bor",
)
GIBBERISH_DIGIT_PREFIXED = ("12zorb", "34krad", "56miff", "78traz", "90vorp", "11glim")
GIBBERISH_DIGIT_INFIXED = ("zorb12krad", "miff34nop", "traz56zle", "vor78pex", "glim90mox", "drub11bin")

GIBBERISH_WORDS = (
    *GIBBERISH_INVENTED, *GIBBERISH_KEYBOARD, *GIBBERISH_CODES, *GIBBERISH_LEET, *GIBBERISH_CAPS,
    *GIBBERISH_ALTERNATING, *GIBBERISH_JOINED, *GIBBERISH_DIGIT_PREFIXED, *GIBBERISH_DIGIT_INFIXED,
)

GIBBERISH_SENTENCES = (
    "Zanthor quexling",
    "Blurpix zanthor quexling.",
    "Flimbat grobnak snorfle.",
    "Wibblex plonkit zorblat krandle.",
    "Miffnop trazzle vorpex.",
    "The glimmox drubbed the skaventh.",
    "Nuxbor pragglet yomtrip fezzwick.",
    "qwerty asdfgh zxcvbn.",
    "12zorb 34krad 56miff 78traz.",
    "zorb-krad miff_nop traz.zle vor;pex.",
    "ZORB KRAX FLUM QUIB.",
    "bLuRpIx zAnThOr QuExLiNg.",
    "bl0rp zn4x fl1mz kr4nk.",
    "Krandle the vorpex, snorfle the grobnak.",
    "A flimbat and a wibblex.",
    "Trazzle? Miffnop! Zorblat.",
)

GIBBERISH_WORDS_DE = (
    "Blürpix", "Zänthör", "Quöxling", "Flümbat", "Gröbnäk", "Schnörfle", "Wübblex", "Plönkit",
    "Zörblat", "Kränndel", "Müffnop", "Träzzle", "Vörpex", "Glümmox",
    # only umlauts and ß
    "äöü", "öäüß", "üüöä", "ßäöü", "ÄÖÜ", "äÖüß",
)

GIBBERISH_SENTENCES_DE = (
    "Blürpix zänthör quöxling.",
    "Flümbat gröbnäk schnörfle.",
    "Wübblex plönkit zörblat.",
    "Kränndel müffnop träzzle.",
    "Der vörpex glümmox schläft.",
    "blürp-zänt quöx_flüm gröb.näk.",
    "ÄÖÜ äöü öäüß.",
    "Ein schnörfle und ein wübblex.",
    "Zörblat! Müffnop? Träzzle.",
    "Größe blürpix übermäßig.",
)
