"""Content of the format-lock dataset: templates and item lists (this project's own wording).

Sections and their sizes follow the upstream's inventory (spec UPSTREAM_DATAGEN.md, 2.3-2.5);
the items are written afresh. Answer conventions: words end in `.`, greetings in `!`, code,
symbols and units are bare.
"""

from __future__ import annotations

# Item lists stay packed, several per line.
# fmt: off

# --- "say" section ------------------------------------------------------------------------------

SAY_TEMPLATES = (
    "Say {w}.",
    "Reply with {w}.",
    "Respond with {w}.",
    "Answer {w}.",
    "Output {w}.",
    "Just say {w}.",
    "Write {w}.",
    "Type {w}.",
    "Only say {w}.",
    "One word: {w}.",
)

# Mixed case on purpose: the answer echoes the word's case exactly (alpha's eval has both
# `Say hello.` -> `hello.` and `Say Hello.` -> `Hello.`).
SAY_WORDS_MINIMAL = (
    "hello", "Hello", "HELLO", "yes", "Yes", "YES", "no", "No", "NO", "ok", "OK",
    "okay", "Okay", "hi", "Hi", "bye", "Bye", "thanks", "Thanks", "sure", "Sure",
    "done", "Done", "fine", "Fine", "go", "Go", "wait", "Wait", "good", "Good",
    "great", "Great", "cool",
)

SAY_WORDS_FULL = (
    "hello", "hi", "hey", "goodbye", "bye", "yes", "no", "OK", "okay", "thanks",
    "please", "sorry", "sure", "maybe", "done", "ready", "start", "stop", "go", "wait",
    "continue", "pause", "next", "back", "open", "close", "save", "load", "run", "exit",
    "cancel", "confirm", "accept", "reject", "true", "false", "on", "off", "up", "down",
    "left", "right", "success", "error", "warning", "pending", "online", "offline", "active", "idle",
    "alpha", "beta", "gamma", "test", "ping", "pong", "sync", "reset", "ID-42", "ref-517",
)

# --- math (ranges and templates are the upstream's, kept as facts) -----------------------------
# Each entry: (templates, a range, b range function, keep predicate, result function).

MATH_MINIMAL = {
    "add": (("What is {a} + {b}?", "{a} plus {b}?"), range(0, 21), lambda a: range(0, 11)),
    "sub": (("What is {a} - {b}?", "{a} minus {b}?"), range(1, 21), lambda a: range(0, min(a, 10) + 1)),
    "mul": (("What is {a} × {b}?", "{a} times {b}?"), range(0, 13), lambda a: range(0, 13)),
    "div": (("What is {a} ÷ {b}?",), range(0, 51), lambda a: range(1, 11)),
}

MATH_FULL = {
    "add": (
        ("What is {a} + {b}?", "{a} plus {b}?", "{a} + {b}?", "Add {a} and {b}."),
        range(0, 51),
        lambda a: range(0, 21),
    ),
    "sub": (
        ("What is {a} - {b}?", "{a} minus {b}?", "{a} - {b}?", "Subtract {b} from {a}."),
        range(0, 51),
        lambda a: range(0, min(a, 20) + 1),
    ),
    "mul": (
        ("What is {a} × {b}?", "{a} times {b}?", "{a} * {b}?", "Multiply {a} by {b}."),
        range(0, 16),
        lambda a: range(0, 16),
    ),
    "div": (
        ("What is {a} ÷ {b}?", "{a} divided by {b}?", "{a} / {b}?"),
        range(0, 151),
        lambda a: range(1, 16),
    ),
}

# --- minimal-mode extras -----------------------------------------------------------------------

MINIMAL_YES = (
    "Is snow cold?", "Is the sun hot?", "Is 3+3=6?", "Is 9 > 4?",
    "Is blue a color?", "Is a cat an animal?", "Is grass green?", "Is 2 even?",
)
MINIMAL_NO = (
    "Is snow hot?", "Is the sun cold?", "Is 3+3=7?", "Is 4 > 9?",
    "Is a dog a fish?", "Is grass purple?", "Is 2 odd?", "Is 8 < 3?",
)
MINIMAL_GREETINGS = (
    ("Good morning!", "Good morning!"),
    ("Good evening!", "Good evening!"),
    ("Hello!", "Hello!"),
    ("Hey!", "Hey!"),
    ("How are you?", "Good."),
)
MINIMAL_STATUS = (
    ("Status?", "OK."),
    ("Ready?", "Ready."),
    ("Everything fine?", "Yes."),
    ("Got it?", "Got it."),
    ("Who are you?", "MyPT."),
)
MINIMAL_GERMAN = (
    ("Sag Hallo.", "Hallo."),
    # More than one way to ask for "Hallo.": with a 10% val split a lone example can land in
    # val, and a model trained from scratch then never sees the answer token.
    ("Sag bitte Hallo.", "Hallo."),
    ("Sag einfach Hallo.", "Hallo."),
    ("Sag hallo.", "hallo."),
    ("Sag Ja.", "Ja."),
    ("Sag Nein.", "Nein."),
    ("Sag OK.", "OK."),
    ("Sag Danke.", "Danke."),
    ("Sag Bitte.", "Bitte."),
    ("Guten Morgen!", "Guten Morgen!"),
    ("Gute Nacht!", "Gute Nacht!"),
    ("Wie geht's?", "Gut."),
    ("Alles klar?", "Ja."),
    ("Verstanden?", "Verstanden."),
)
MINIMAL_COLORS = ("red", "Red", "green", "Green", "blue", "Blue", "black", "Black")
MINIMAL_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")

# --- full-mode sections ------------------------------------------------------------------------

COLORS = (
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown",
    "black", "white", "gray", "cyan", "magenta", "violet", "indigo", "turquoise",
    "beige", "maroon", "navy", "olive", "teal", "gold", "silver", "lime",
)
COLOR_TEMPLATES = ("Say {c}.", "Color: {c}.", "Name the color {c}.", "Pick {c}.")

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAY_TEMPLATES = ("Say {d}.", "Day: {d}.", "Name the day {d}.")
DAY_SEQUENCE_TEMPLATES = ("Which day follows {prev}?", "Day after {prev}?", "Day {n} of the week?")

MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
MONTH_TEMPLATES = ("Say {m}.", "Month: {m}.")
MONTH_SEQUENCE_TEMPLATES = ("Which month is number {n}?", "Month {n}?", "Month after {prev}?")

CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Switzerland", "Bern"), ("Austria", "Vienna"),
    ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Poland", "Warsaw"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"), ("Ireland", "Dublin"), ("Greece", "Athens"),
    ("Hungary", "Budapest"), ("Czechia", "Prague"), ("Japan", "Tokyo"), ("China", "Beijing"),
    ("India", "New Delhi"), ("South Korea", "Seoul"), ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"), ("Brazil", "Brasília"), ("Argentina", "Buenos Aires"),
    ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Russia", "Moscow"),
    ("Turkey", "Ankara"), ("Thailand", "Bangkok"), ("Chile", "Santiago"),
    ("the United Kingdom", "London"), ("the USA", "Washington"),
)
CAPITAL_TEMPLATES = ("Capital of {x}?", "What is the capital of {x}?", "Which city is the capital of {x}?")

OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("open", "closed"),
    ("light", "dark"), ("happy", "sad"), ("tall", "short"), ("wet", "dry"), ("full", "empty"),
    ("early", "late"), ("hard", "soft"), ("loud", "quiet"), ("rich", "poor"), ("strong", "weak"),
    ("thick", "thin"), ("high", "low"), ("near", "far"), ("clean", "dirty"), ("true", "false"),
    ("win", "lose"), ("push", "pull"), ("inside", "outside"), ("left", "right"), ("day", "night"),
    ("black", "white"), ("good", "bad"), ("begin", "end"), ("first", "last"), ("heavy", "light"),
    ("buy", "sell"), ("north", "south"),
)
OPPOSITE_TEMPLATES = (
    "Opposite of {w}?", "What is the opposite of {w}?", "Antonym of {w}?", "Opposite word for {w}?",
)

YES_FACTS = (
    "Is water wet?", "Is the sky blue on a clear day?", "Is 5 greater than 2?", "Is 7 an odd number?",
    "Is 10 an even number?", "Is 4 + 4 = 8?", "Is 6 × 2 = 12?", "Is a dog a mammal?",
    "Is a whale a mammal?", "Is a spider an animal?", "Is the Earth round?", "Is the Moon smaller than the Earth?",
    "Is ice frozen water?", "Is Paris in France?", "Is Berlin in Germany?", "Is Tokyo in Japan?",
    "Is a rose a flower?", "Is an apple a fruit?", "Is a carrot a vegetable?", "Is gold a metal?",
    "Is iron a metal?", "Is a triangle a shape?", "Does a square have four sides?", "Does a week have seven days?",
    "Does a year have twelve months?", "Do fish live in water?", "Do birds have feathers?", "Do plants need light?",
    "Is English a language?", "Is Python a programming language?", "Is summer warmer than winter?",
    "Is a minute sixty seconds?", "Is an hour longer than a minute?", "Is 0 less than 1?", "Is 100 more than 99?",
)
NO_FACTS = (
    "Is water dry?", "Is the sun cold?", "Is 2 greater than 5?", "Is 7 an even number?",
    "Is 9 an even number?", "Is 4 + 4 = 9?", "Is 3 × 3 = 10?", "Is a cat a bird?",
    "Is a shark a mammal?", "Is the Earth flat?", "Is the Moon bigger than the Earth?", "Is fire cold?",
    "Is Paris in Germany?", "Is Rome in Spain?", "Is a carrot a fruit?", "Is wood a metal?",
    "Does a triangle have four sides?", "Does a week have ten days?", "Do fish have wings?",
    "Do cows fly?", "Is snow black?", "Is winter warmer than summer?", "Is an hour shorter than a minute?",
    "Is 1 more than 2?", "Is 50 less than 5?", "Is a circle a square?", "Can a stone swim?",
    "Is the ocean made of sand?", "Is night brighter than day?",
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_TEMPLATES = (
    "Letter number {n}?", "Which letter is number {n}?", "Say letter {L}.", "Letter: {L}.",
    "Repeat the letter {L}.", "Type the letter {L}.",
)

NUMBERS_IN_WORDS = (
    *range(0, 21), 25, 30, 40, 42, 50, 60, 70, 80, 90, 99, 100, 101, 250, 365, 500, 1000, 1000000,
)
NUMBER_WORD_TEMPLATES = ("{n} in words?", "Spell {n}.", "Write {n} as a word.", "Number {n} in words?")

ANIMAL_SOUNDS = (
    ("dog", "Woof"), ("cat", "Meow"), ("cow", "Moo"), ("sheep", "Baa"), ("pig", "Oink"),
    ("duck", "Quack"), ("horse", "Neigh"), ("owl", "Hoot"), ("lion", "Roar"), ("snake", "Hiss"),
    ("frog", "Ribbit"), ("bee", "Buzz"), ("mouse", "Squeak"), ("donkey", "Hee-haw"), ("crow", "Caw"),
    ("wolf", "Howl"), ("chicken", "Cluck"), ("goat", "Maa"), ("turkey", "Gobble"),
)
ANIMAL_SOUND_TEMPLATES = ("{A} sound?", "What sound does {art} {a} make?", "What does {art} {a} say?")

ANIMAL_FACTS = (
    ("Largest animal?", "Blue whale."),
    ("Fastest land animal?", "Cheetah."),
    ("Tallest animal?", "Giraffe."),
    ("Which animal has a trunk?", "Elephant."),
    ("Which bird lives in Antarctica and cannot fly?", "Penguin."),
    ("Which insect makes honey?", "Bee."),
    ("Which animal is called the king of the jungle?", "Lion."),
    ("Which animal has black and white stripes?", "Zebra."),
)

DIRECTIONS = (
    "north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest",
    "up", "down", "left", "right", "forward", "backward", "inside", "outside",
    "clockwise", "counterclockwise", "above", "below",
)
DIRECTION_TEMPLATES = ("Say {d}.", "Direction: {d}.", "Which direction? {d}.")

GREETINGS = (
    ("Hello!", "Hello!"), ("Hi!", "Hi!"), ("Hey!", "Hey!"), ("Good morning!", "Good morning!"),
    ("Good afternoon!", "Good afternoon!"), ("Good evening!", "Good evening!"),
    ("Good night!", "Good night!"), ("Welcome!", "Welcome!"), ("Goodbye!", "Goodbye!"),
    ("See you later!", "See you later!"), ("How are you?", "I'm fine, thanks!"),
    ("Nice to meet you!", "Nice to meet you too!"), ("Hola!", "Hola!"), ("Bonjour!", "Bonjour!"),
    ("Namaste!", "Namaste!"), ("Ciao!", "Ciao!"), ("Salut!", "Salut!"),
)

# `How are you?` also appears in GREETINGS with another answer: a conflict the upstream has too.
STATUS = (
    ("Status?", "OK."), ("Are you ready?", "Ready."), ("Are you online?", "Yes."),
    ("Is it working?", "Yes."), ("System check?", "OK."), ("Any errors?", "No."),
    ("Done?", "Done."), ("Finished?", "Finished."), ("How are you?", "Good."),
    ("What is your name?", "MyPT."), ("Are you there?", "Yes."), ("Ping?", "Pong."),
    ("Health check?", "Healthy."), ("Connection?", "Connected."), ("Progress?", "Complete."),
    ("Ready to start?", "Yes."), ("Can you hear me?", "Yes."), ("Confirm?", "Confirmed."),
    ("Acknowledge?", "Acknowledged."), ("Result?", "Success."),
)

FILE_EXTENSIONS = (
    ("Python", ".py"), ("JavaScript", ".js"), ("TypeScript", ".ts"), ("Java", ".java"),
    ("C", ".c"), ("C++", ".cpp"), ("C#", ".cs"), ("Go", ".go"), ("Rust", ".rs"), ("Ruby", ".rb"),
    ("PHP", ".php"), ("Swift", ".swift"), ("Kotlin", ".kt"), ("HTML", ".html"), ("CSS", ".css"),
    ("JSON", ".json"), ("YAML", ".yaml"), ("Markdown", ".md"), ("plain text", ".txt"),
    ("CSV", ".csv"), ("XML", ".xml"), ("shell script", ".sh"), ("SQL", ".sql"), ("PDF", ".pdf"),
    ("PNG", ".png"), ("JPEG", ".jpg"),
)
FILE_EXTENSION_TEMPLATES = (
    "{x} file extension?", "Extension for {x} files?", "What extension do {x} files use?",
    "File extension of {x}?", "{x} extension?",
)

SYMBOLS = (
    ("Backslash?", "\\"), ("Forward slash?", "/"), ("Ampersand?", "&"), ("At sign?", "@"),
    ("Hash sign?", "#"), ("Dollar sign?", "$"), ("Percent sign?", "%"), ("Caret?", "^"),
    ("Asterisk?", "*"), ("Plus sign?", "+"), ("Minus sign?", "-"), ("Equals sign?", "="),
    ("Underscore?", "_"), ("Pipe symbol?", "|"), ("Tilde?", "~"), ("Backtick?", "`"),
    ("Question mark?", "?"), ("Exclamation mark?", "!"), ("Colon?", ":"), ("Semicolon?", ";"),
    ("Comma?", ","), ("Full stop symbol?", "."), ("Opening parenthesis?", "("),
    ("Closing parenthesis?", ")"), ("Opening square bracket?", "["), ("Closing square bracket?", "]"),
    ("Opening curly brace?", "{"), ("Closing curly brace?", "}"), ("Less-than sign?", "<"),
    ("Greater-than sign?", ">"), ("Double quote?", '"'), ("Single quote?", "'"), ("Euro sign?", "€"),
    ("Pound sterling sign?", "£"), ("Degree sign?", "°"), ("Section sign?", "§"),
    ("Copyright sign?", "©"), ("Right arrow?", "→"),
)

UNITS = (
    ("kilometer", "km"), ("meter", "m"), ("centimeter", "cm"), ("millimeter", "mm"),
    ("kilogram", "kg"), ("gram", "g"), ("liter", "l"), ("milliliter", "ml"), ("second", "s"),
    ("minute", "min"), ("hour", "h"), ("degrees Celsius", "°C"), ("degrees Fahrenheit", "°F"),
    ("megabyte", "MB"),
)
UNIT_TEMPLATE = "Abbreviation for {u}?"

PRINT_STATEMENTS = (
    ("Python", "print()"), ("JavaScript", "console.log()"), ("Java", "System.out.println()"),
    ("C", "printf()"), ("C++", "std::cout <<"), ("C#", "Console.WriteLine()"), ("Go", "fmt.Println()"),
    ("Rust", "println!()"), ("Ruby", "puts"), ("PHP", "echo"), ("Kotlin", "println()"), ("Bash", "echo"),
)
PRINT_TEMPLATES = ("Print statement in {L}?", "How to print in {L}?", "{L} print function?", "Print in {L}?")

COMMENT_SYNTAX = (
    ("Python", "#"), ("JavaScript", "//"), ("Java", "//"), ("C", "//"), ("C++", "//"), ("Go", "//"),
    ("Rust", "//"), ("Ruby", "#"), ("Bash", "#"), ("R", "#"), ("SQL", "--"), ("Lua", "--"),
    ("Haskell", "--"), ("HTML", "<!-- -->"), ("CSS", "/* */"),
)
COMMENT_TEMPLATES = (
    "Comment syntax in {L}?", "{L} comment?", "How do you comment in {L}?", "{L} comment symbol?",
)

BOOLEANS = (
    ("Python", "True", "False"), ("JavaScript", "true", "false"), ("Java", "true", "false"),
    ("C++", "true", "false"), ("Go", "true", "false"), ("Rust", "true", "false"),
    ("Ruby", "true", "false"), ("Swift", "true", "false"), ("Haskell", "True", "False"),
    ("R", "TRUE", "FALSE"),
)
BOOLEAN_TEMPLATES = ("{V} in {L}?", "{L} {v} value?")

NULL_VALUES = (
    ("Python", "None"), ("JavaScript", "null"), ("Java", "null"), ("C#", "null"), ("Kotlin", "null"),
    ("Ruby", "nil"), ("Go", "nil"), ("Swift", "nil"), ("Lua", "nil"), ("C", "NULL"), ("C++", "nullptr"),
)
NULL_TEMPLATES = ("Null in {L}?", "{L} null value?", "Empty value in {L}?")

ARRAY_SYNTAX = (
    ("Python", "[]"), ("JavaScript", "[]"), ("Ruby", "[]"), ("PHP", "[]"), ("Swift", "[]"),
    ("Perl", "()"), ("Bash", "()"), ("Lua", "{}"), ("Go", "[]T{}"),
)
ARRAY_TEMPLATES = ("Array in {L}?", "{L} array syntax?")

DICT_SYNTAX = (
    ("Python", "{}"), ("JavaScript", "{}"), ("Ruby", "{}"), ("PHP", "[]"), ("Swift", "[:]"), ("Lua", "{}"),
)
DICT_TEMPLATES = ("Dictionary in {L}?", "{L} dict syntax?")

FUNCTION_KEYWORDS = (
    ("Python", "def"), ("JavaScript", "function"), ("Go", "func"), ("Rust", "fn"), ("Kotlin", "fun"),
    ("Swift", "func"), ("Ruby", "def"), ("PHP", "function"), ("Lua", "function"), ("Bash", "function"),
)
FUNCTION_TEMPLATES = ("Function keyword in {L}?", "{L} function keyword?")

# Fixed programming lists: answers are bare code.
PROGRAMMING_FIXED = (
    # string quotes
    ("String quotes in Python?", "' or \""), ("String quotes in JavaScript?", "' or \""),
    ("String quotes in Java?", '"'), ("Char quotes in Java?", "'"), ("String quotes in Go?", '"'),
    ("Raw string quotes in Go?", "`"), ("Template literal quotes in JavaScript?", "`"),
    ("String quotes in C?", '"'), ("String quotes in SQL?", "'"),
    # HTTP methods
    ("HTTP method to read data?", "GET"), ("HTTP method to create data?", "POST"),
    ("HTTP method to replace data?", "PUT"), ("HTTP method to delete data?", "DELETE"),
    ("HTTP method for a partial update?", "PATCH"), ("HTTP method for headers only?", "HEAD"),
    ("HTTP method to list allowed methods?", "OPTIONS"),
    # HTTP status codes
    ("HTTP 200?", "OK"), ("HTTP 201?", "Created"), ("HTTP 204?", "No Content"),
    ("HTTP 301?", "Moved Permanently"), ("HTTP 400?", "Bad Request"), ("HTTP 401?", "Unauthorized"),
    ("HTTP 403?", "Forbidden"), ("HTTP 404?", "Not Found"), ("HTTP 500?", "Internal Server Error"),
    ("HTTP 503?", "Service Unavailable"),
    # data types
    ("Python integer type?", "int"), ("Python float type?", "float"), ("Python string type?", "str"),
    ("Python list type?", "list"), ("Python dict type?", "dict"), ("Python boolean type?", "bool"),
    ("Java integer type?", "int"), ("Java string type?", "String"), ("C character type?", "char"),
    ("C double type?", "double"), ("Rust string type?", "String"), ("Go string type?", "string"),
    ("TypeScript number type?", "number"), ("Rust boolean type?", "bool"),
    # keywords
    ("Python loop keyword?", "for"), ("Python condition keyword?", "if"),
    ("Python else-if keyword?", "elif"), ("Python class keyword?", "class"),
    ("Python import keyword?", "import"), ("Python return keyword?", "return"),
    ("Python exception keyword?", "try"), ("Python anonymous function keyword?", "lambda"),
    ("JavaScript constant keyword?", "const"), ("JavaScript variable keyword?", "let"),
    ("Java class inheritance keyword?", "extends"), ("Java interface keyword?", "implements"),
    ("C++ namespace keyword?", "namespace"), ("Rust variable keyword?", "let"),
    ("Rust mutable keyword?", "mut"), ("Go package keyword?", "package"),
    ("Go concurrency keyword?", "go"), ("SQL query keyword?", "SELECT"),
    ("SQL filter keyword?", "WHERE"), ("SQL sort keyword?", "ORDER BY"),
    # operators
    ("Equality operator in Python?", "=="), ("Strict equality in JavaScript?", "==="),
    ("Not equal in Python?", "!="), ("Logical and in Python?", "and"), ("Logical or in Python?", "or"),
    ("Logical not in Python?", "not"), ("Logical and in C?", "&&"), ("Logical or in C?", "||"),
    ("Logical not in C?", "!"), ("Modulo operator?", "%"), ("Power operator in Python?", "**"),
    ("Integer division in Python?", "//"), ("Assignment operator?", "="), ("Increment in C?", "++"),
    ("Decrement in C?", "--"), ("Add and assign?", "+="), ("Bitwise and?", "&"), ("Bitwise or?", "|"),
    ("Bitwise xor?", "^"), ("Walrus operator in Python?", ":="),
    # git commands
    ("Git command to copy a repository?", "git clone"), ("Git command to stage files?", "git add"),
    ("Git command to save changes?", "git commit"), ("Git command to upload commits?", "git push"),
    ("Git command to download and merge?", "git pull"), ("Git command to show changes?", "git diff"),
    ("Git command to show the state?", "git status"), ("Git command to show history?", "git log"),
    ("Git command to create a repository?", "git init"), ("Git command to list branches?", "git branch"),
    ("Git command to merge branches?", "git merge"), ("Git command to download only?", "git fetch"),
    # command-line commands
    ("Command to list files?", "ls"), ("Command to change directory?", "cd"),
    ("Command to print the working directory?", "pwd"), ("Command to make a directory?", "mkdir"),
    ("Command to remove a file?", "rm"), ("Command to copy a file?", "cp"), ("Command to move a file?", "mv"),
    ("Command to show a file?", "cat"), ("Command to search text?", "grep"),
    ("Command to create an empty file?", "touch"), ("Command to show processes?", "ps"),
    ("Command to show disk usage?", "du"), ("Command to change permissions?", "chmod"),
    ("Command to run as administrator?", "sudo"), ("Command to clear the screen?", "clear"),
)

# Plain-word comparisons: answers end in `.`.
COMPARISONS = (
    ("Bigger: mouse or horse?", "Horse."), ("Smaller: ant or dog?", "Ant."),
    ("Faster: snail or car?", "Car."), ("Slower: turtle or rabbit?", "Turtle."),
    ("Hotter: ice or fire?", "Fire."), ("Colder: sun or snow?", "Snow."),
    ("Heavier: feather or brick?", "Brick."), ("Lighter: rock or leaf?", "Leaf."),
    ("Taller: giraffe or cat?", "Giraffe."), ("Longer: day or hour?", "Day."),
    ("Shorter: minute or week?", "Minute."), ("Larger: 7 or 3?", "7."),
    ("Smaller: 12 or 21?", "12."), ("Bigger: planet or moon?", "Planet."),
    ("Older: baby or grandfather?", "Grandfather."), ("Louder: whisper or shout?", "Shout."),
    ("Wetter: ocean or desert?", "Ocean."), ("Higher: mountain or hill?", "Mountain."),
    ("Deeper: ocean or puddle?", "Ocean."), ("Brighter: sun or candle?", "Sun."),
)

POLITE = (
    ("Thank you.", "You're welcome."), ("Thanks!", "You're welcome!"), ("Thank you very much!", "My pleasure!"),
    ("Please help.", "Sure."), ("Sorry.", "No problem."), ("Excuse me.", "Yes?"),
    ("Can you help me?", "Yes."), ("Could you help me, please?", "Of course."),
    ("Have a nice day!", "You too!"), ("Good job!", "Thank you!"), ("Well done!", "Thanks!"),
    ("I appreciate it.", "Glad to help."), ("Pardon?", "Sorry?"), ("May I ask something?", "Sure."),
    ("Sorry for the trouble.", "No problem."),
)

GERMAN_BASICS = (
    ("Sag Hallo.", "Hallo."), ("Sag Ja.", "Ja."), ("Sag Nein.", "Nein."), ("Sag Danke.", "Danke."),
    ("Sag Bitte.", "Bitte."), ("Sag Tschüss.", "Tschüss."), ("Sag Guten Morgen.", "Guten Morgen."),
    ("Guten Morgen!", "Guten Morgen!"), ("Guten Abend!", "Guten Abend!"), ("Gute Nacht!", "Gute Nacht!"),
    ("Wie geht's?", "Gut."), ("Alles klar?", "Ja."), ("Verstanden?", "Verstanden."), ("Bereit?", "Bereit."),
    ("Fertig?", "Fertig."), ("Hauptstadt von Deutschland?", "Berlin."),
    ("Hauptstadt von Frankreich?", "Paris."), ("Hauptstadt von Österreich?", "Wien."),
    ("Hauptstadt von der Schweiz?", "Bern."), ("Was ist 2 + 2?", "4."), ("Was ist 5 - 3?", "2."),
    ("Ist Schnee kalt?", "Ja."), ("Ist Feuer kalt?", "Nein."), ("Ist der Himmel grün?", "Nein."),
    ("Gegenteil von heiß?", "Kalt."), ("Gegenteil von groß?", "Klein."), ("Gegenteil von schnell?", "Langsam."),
    ("Welche Farbe hat Gras?", "Grün."), ("Welche Farbe hat der Himmel?", "Blau."),
    ("Welche Farbe hat Schnee?", "Weiß."), ("Welches Geräusch macht ein Hund?", "Wuff."),
    ("Welches Geräusch macht eine Katze?", "Miau."), ("Welches Geräusch macht eine Kuh?", "Muh."),
    ("Danke schön!", "Bitte schön!"),
)

# Case-sensitive substrings that mark a question as German (the upstream's rule, with its list
# extended so that every German item here is caught, including the two it used to miss).
GERMAN_INDICATORS = (
    "Sag ", "Guten ", "Gute ", "Hauptstadt von", "Was ist", "Ist ", "Gegenteil von", "Welche Farbe",
    "Geräusch", "Verstanden", "Fertig", "Bereit", "Wie geht", "Alles klar", "Danke",
)
