"""Vocabularies and templates of the prompt library (data only; the engine is `pipeline/prompts.py`).

A template is a `str.format` string over named vocabularies. A field named `colour2` (a name with a
numeric suffix) draws from the vocabulary `colour`; fields of one template that share a vocabulary
always take *different* entries ("a red cube ... a blue sphere", never "a red cube ... a red cube").
A field that appears twice in a template takes the same value both times.

Rules the tests check: entries are unique within a vocabulary, have no leading or trailing spaces and
no braces; quoted text carries no double quote; article-bearing entries are written with "a"/"an"
already right, and a template's bare "a {field}" is fixed to "an" where the next word needs it.
"""
from __future__ import annotations

COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _counted(nouns: tuple[tuple[str, str], ...], start: int = 1) -> tuple[str, ...]:
    """'one apple', 'two apples', ... for every (singular, plural) noun and count word from `start`."""
    return tuple(
        f"{word} {singular if n == 1 else plural}"
        for singular, plural in nouns
        for n, word in enumerate(COUNT_WORDS, start=1)
        if n >= start
    )


# --------------------------------------------------------------------------------------------------
# shared: scenes, styles, light, colour

SCENE = (
    "a lighthouse on a sea cliff", "a red fox in fresh snow", "an old library with tall wooden shelves",
    "a still mountain lake ringed by pine trees", "a koi pond in a Japanese garden",
    "a desert caravan crossing the dunes",
    "a glass greenhouse full of ferns", "a tea house on a hillside", "a tall ship under full sail",
    "a narrow city street lined with shops", "a field of sunflowers", "a steaming bowl of ramen",
    "a violin resting on a velvet chair", "a steam train crossing a stone viaduct",
    "a hot air balloon over rolling hills",
    "a cobblestone alley in an old town", "a snow-covered cabin in the woods",
    "a lavender field with a stone farmhouse",
    "a bustling street market", "a vintage motorcycle parked by a brick wall",
    "a bowl of ripe peaches on a linen cloth",
    "a cozy reading nook by a window", "a waterfall in a mossy forest", "an owl perched on a branch",
    "a white horse in a meadow", "a sailboat on a calm bay", "a cathedral interior with stained glass windows",
    "a path through a bamboo forest", "a rocky coastline with crashing waves", "a bouquet of peonies in a glass vase",
    "a cup of coffee on a café table", "a jazz musician playing a saxophone", "a ballerina in a rehearsal studio",
    "an astronaut standing on a rocky moon", "a giant tortoise on a beach", "a hummingbird beside a red flower",
    "a Venetian canal with gondolas", "a windmill beside a tulip field", "a futuristic city skyline",
    "an abandoned greenhouse overgrown with vines", "a mountain village with terraced fields",
    "a stack of old books and a brass lamp", "a peacock displaying its feathers", "a wooden rowboat on a quiet lake",
    "a spiral staircase in an old tower", "a snowy mountain peak above the clouds",
    "a wheat field with a lone oak tree",
    "a tiny cottage with a flower garden", "a fishing village with colourful houses", "a pair of swans on a river",
    "a tram climbing a hilly street", "a cat asleep on a windowsill", "a chess board in the middle of a game",
    "a market stall piled with citrus fruit", "a rooftop garden above the city", "a stone bridge over a stream",
    "an ancient temple in the jungle", "a desert canyon with red rock walls", "a dragon curled around a castle tower",
    "a koala asleep in a eucalyptus tree", "a jellyfish drifting in deep water", "a coral reef with tropical fish",
    "a pot of tea and a plate of scones", "a vintage typewriter on a desk", "a bicycle leaning against a blue door",
    "a café with hanging plants", "a grand piano in an empty hall", "a carousel at a fairground",
    "a frozen waterfall", "an orchard of blossoming cherry trees", "a deer at the edge of a forest",
    "a harbour full of fishing boats", "a row of townhouses with colourful doors",
    "a glass of red wine on a marble counter",
    "a hedgehog among autumn leaves", "a dirt road through rolling vineyards", "a lone tree on a hill",
    "a samurai standing in a bamboo grove", "a tiger resting by a river", "a brass telescope on a balcony",
    "a basket of freshly baked bread", "a sea turtle gliding over a reef", "a potter shaping clay on a wheel",
    "a street musician playing an accordion", "a garden gate covered in roses", "a polar bear on drifting ice",
)

STYLE = (  # noun phrases without an article: "..., oil painting" and "an oil painting of ..."
    "oil painting", "watercolour painting", "35mm film photograph", "studio photograph", "ukiyo-e woodblock print",
    "art nouveau poster", "isometric 3d render", "charcoal sketch", "cinematic still", "pastel illustration",
    "gouache painting", "impressionist painting", "digital matte painting", "low-poly 3d render", "claymation still",
    "pencil drawing", "ink wash painting", "linocut print", "stained glass design", "mosaic",
    "vintage travel poster", "children's book illustration", "Polaroid photograph", "black and white photograph",
    "long-exposure photograph", "tilt-shift photograph", "baroque oil painting", "art deco illustration",
    "pop art print", "paper cut-out collage", "embroidered tapestry", "pixel art scene", "cel-shaded anime frame",
    "fresco", "screen print", "airbrushed illustration",
)

LIGHTING = (
    "golden hour light", "soft overcast light", "dramatic rim light", "the glow of neon signs", "candlelight",
    "blue hour twilight", "volumetric fog and god rays", "harsh midday sun", "soft window light", "moonlight",
    "warm lamplight", "dappled sunlight through leaves", "a stormy sky", "the first light of dawn", "a fiery sunset",
    "studio softbox lighting", "backlight with lens flare", "low-key chiaroscuro lighting", "the glow of a campfire",
    "the green glow of the northern lights", "misty morning light", "bright high-key lighting",
    "the warm glow of string lights", "cool fluorescent light", "a shaft of light through a window",
    "overcast winter light", "late afternoon sun", "a bioluminescent glow",
)

PALETTE = (
    "a muted pastel palette", "rich jewel tones", "teal and orange tones", "a monochrome blue palette",
    "warm earthy tones", "vivid saturated colours", "soft desaturated colours", "high contrast",
    "black and gold accents",
    "a sepia tone", "cool silver tones", "a red and green complementary palette", "dusty rose and sage tones",
    "bold primary colours", "a palette of creams and browns", "deep purples and magentas", "a faded vintage palette",
    "crisp whites and blues", "autumn oranges and reds", "subtle greys with one red accent",
)

MOOD = (
    "serene", "melancholic", "whimsical", "dreamy", "dramatic", "nostalgic", "mysterious", "joyful", "cozy", "epic",
    "tranquil", "eerie", "romantic", "playful", "solemn", "hopeful",
)

LENS = (
    "85mm lens, shallow depth of field", "wide-angle lens", "telephoto lens, compressed perspective", "macro lens",
    "50mm lens at f/1.8", "medium format camera", "35mm lens, natural perspective", "long exposure", "tilt-shift lens",
    "soft focus", "deep depth of field", "24mm lens, low angle", "high angle view", "eye-level view",
)

COLOUR = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown", "grey", "teal")

# --------------------------------------------------------------------------------------------------
# composition: counting, spatial relations, attribute binding, layout

_TABLETOP = (
    ("apple", "apples"), ("orange", "oranges"), ("lemon", "lemons"), ("pear", "pears"), ("egg", "eggs"),
    ("teacup", "teacups"), ("wine glass", "wine glasses"), ("candle", "candles"), ("book", "books"),
    ("pencil", "pencils"), ("spoon", "spoons"), ("plate", "plates"), ("bowl", "bowls"), ("donut", "donuts"),
    ("cupcake", "cupcakes"), ("macaron", "macarons"), ("strawberry", "strawberries"), ("tomato", "tomatoes"),
    ("bottle", "bottles"), ("jar", "jars"),
)
_TOYS = (
    ("toy car", "toy cars"), ("rubber duck", "rubber ducks"), ("wooden block", "wooden blocks"),
    ("chess piece", "chess pieces"), ("paper boat", "paper boats"), ("toy robot", "toy robots"),
    ("teddy bear", "teddy bears"), ("seashell", "seashells"), ("pine cone", "pine cones"),
    ("origami crane", "origami cranes"), ("key", "keys"), ("tennis ball", "tennis balls"),
    ("potted succulent", "potted succulents"), ("crayon", "crayons"), ("paintbrush", "paintbrushes"),
    ("glass marble", "glass marbles"), ("toy dinosaur", "toy dinosaurs"), ("snow globe", "snow globes"),
    ("spool of thread", "spools of thread"), ("alarm clock", "alarm clocks"),
)

COUNTED = _counted(_TABLETOP + _TOYS)  # one..ten
COUNTED_A = _counted(_TABLETOP)
COUNTED_B = _counted(_TOYS)
COUNTED_MANY = _counted(_TABLETOP + _TOYS, start=2)  # two..ten, for arrangements

ARRANGEMENT = (
    "in a neat row", "lined up in a straight line", "scattered at random", "grouped closely together",
    "spread far apart", "in a diagonal line",
)

SURFACE = (
    "a wooden table", "a white marble countertop", "a checkered tablecloth", "a plain grey background",
    "a kitchen counter", "a picnic blanket", "a glass shelf", "a rustic bench", "a black slate board",
    "a sunlit windowsill", "an office desk", "a stone step", "a woven rug", "a tiled floor", "a concrete floor",
    "a bed of sand", "a green felt table", "a metal tray", "a bookshelf", "the grass",
)

VIEW = ("top-down view", "eye-level view", "seen from a low angle", "three-quarter view", "wide shot", "close-up")

RELATION = (
    "on top of", "to the left of", "to the right of", "underneath", "behind", "in front of", "next to", "above",
    "below",
)

THING = (
    "chair", "table", "box", "crate", "suitcase", "stool", "bench", "bicycle", "umbrella", "car", "cube", "sphere",
    "vase", "bowl", "teapot", "lamp", "clock", "backpack", "guitar", "bucket", "watering can", "armchair", "ladder",
    "sofa",
)

SIZE = ("small", "large", "tiny", "huge")
MATERIAL = ("wooden", "glass", "ceramic", "metal", "marble", "plastic", "stone")
SHAPE = (
    "cube", "sphere", "cone", "cylinder", "pyramid", "ring", "vase", "bowl", "cup", "teapot", "bottle", "box",
    "chair", "stool", "bucket", "figurine",
)

POSITION = (
    "top left corner", "top right corner", "bottom left corner", "bottom right corner", "centre", "left third",
    "right third", "upper half",
)

BACKDROP = (
    "a plain white background", "a pale blue background", "a light grey background", "a beige background",
    "a black background", "a soft gradient background",
)

# --------------------------------------------------------------------------------------------------
# text-image alignment: characters with several bound details, vehicles in places, furnished rooms

CHARACTER = (
    "a corgi", "a grey tabby cat", "a golden retriever", "a panda", "a raccoon", "an owl", "a penguin",
    "a teddy bear", "a small robot", "an astronaut", "an old sailor", "a young girl", "a knight", "a fox",
    "a rabbit", "a hedgehog", "a sloth", "an elephant", "a giraffe", "a frog", "a brown bear", "a koala", "a lion",
    "a dachshund", "a parrot", "a snowman", "a little boy", "an elderly woman", "a wizard", "an otter",
)

WEARING = (
    "wearing a yellow raincoat", "wearing a tiny golden crown", "wearing round glasses", "wearing a red bow tie",
    "wearing a striped scarf", "wearing a cowboy hat", "wearing a space helmet", "wearing a green knitted sweater",
    "wearing a pirate hat", "wearing a chef's hat", "wearing a blue backpack", "wearing a flower crown",
    "wearing rubber boots", "wearing a purple cape", "wearing headphones", "wearing a denim jacket",
    "wearing a party hat", "wearing aviator goggles", "wearing a tuxedo", "wearing a wool beanie",
)

HOLDING = (
    "holding a red umbrella", "holding a bunch of balloons", "holding a cup of coffee", "holding a map",
    "holding a paper lantern", "holding a bouquet of tulips", "holding a tiny guitar", "holding an ice cream cone",
    "holding a magnifying glass", "holding a book", "holding a watering can", "holding a kite",
    "holding a slice of watermelon", "holding a compass", "holding a fishing rod",
)

ACTION_PLACE = (
    "sitting on a park bench", "standing on a surfboard", "riding a bicycle through a village",
    "reading under a tree", "waiting at a train station", "sitting at a café table", "standing on a mountain summit",
    "walking through a field of tulips", "floating in a rowboat on a lake", "standing in a snowy forest",
    "sitting on the moon", "exploring a library", "standing in a sunflower field", "sitting on a stack of books",
    "standing on a city rooftop", "walking down a cobblestone street", "sitting in a hot air balloon basket",
    "standing at the bow of a ship", "relaxing in a hammock", "sitting by a campfire", "standing in the rain",
    "standing in front of a castle", "sitting on a wooden dock", "crossing a rope bridge",
)

STYLE_SHORT = (
    "watercolour painting", "3d render", "photograph", "children's book illustration", "oil painting",
    "pencil sketch", "claymation still", "anime style", "vintage postcard", "pixel art", "felt puppet style",
    "comic book panel",
)

VEHICLE = (
    "vintage car", "pickup truck", "scooter", "bicycle", "camper van", "motorcycle", "tractor", "food truck",
    "double-decker bus", "taxi", "convertible", "delivery van",
)

VEHICLE_PLACE = (
    "in front of a bakery", "beside a lighthouse", "under a cherry tree", "on a desert road", "outside a red barn",
    "next to a fountain", "on a snowy mountain road", "in a narrow alley", "by a lake", "at a gas station",
    "in front of a flower shop", "on a cobblestone square", "under a bridge", "beside a field of lavender",
    "at the edge of a cliff",
)

TIME = (
    "at dawn", "at noon", "at sunset", "at night", "in the rain", "in the snow", "in thick fog",
    "under a starry sky",
)

ROOM = (
    "a living room", "a bedroom", "a kitchen", "a study", "a hotel lobby", "a waiting room", "a studio apartment",
    "a sunroom", "an attic", "a library", "a classroom", "a café",
)

FURNITURE = (
    "sofa", "armchair", "rug", "bookshelf", "coffee table", "floor lamp", "desk", "rocking chair", "bench",
    "cabinet", "ottoman", "dining table", "bean bag", "side table", "wardrobe", "stool",
)

DECOR = (
    "a large fern in the corner", "a round mirror on the wall", "a framed map of the world", "a ticking wall clock",
    "a stack of vinyl records", "a bowl of lemons", "a guitar leaning on the wall", "a sleeping cat",
    "a globe on a shelf", "fairy lights along the ceiling", "a vase of sunflowers", "a striped curtain",
    "three paintings in a row", "a tall window with a city view", "a brass telescope",
)

PERSON = (
    "an elderly fisherman", "a young violinist", "a woman with freckles", "a chef in a white jacket",
    "a smiling child", "a marathon runner", "a man with a grey beard", "a dancer", "a gardener in overalls",
    "a teenage skateboarder", "a nurse in blue scrubs", "a grandmother with silver hair",
)

PERSON_DETAIL = (
    "wearing a striped scarf", "holding a blue umbrella", "walking a small dog", "wearing round glasses",
    "carrying a stack of three books", "pushing a red bicycle", "holding a bunch of yellow balloons",
    "wearing a green hat", "reading a newspaper", "drinking from a white mug",
)

PLACE = (
    "a busy train station", "a quiet library", "a rainy street", "a sunny park", "a crowded market",
    "a small bakery", "a snowy village square", "a greenhouse", "an art gallery", "a harbour at dusk",
    "a rooftop garden", "a laundromat",
)

# --------------------------------------------------------------------------------------------------
# text rendering: quoted text on surfaces, in lettering styles

TEXT = (
    # single words
    "OPEN", "CLOSED", "EXIT", "STOP", "WELCOME", "SALE", "Bakery", "Coffee", "Library", "Pharmacy", "Hotel",
    "Books", "Garden", "Ramen", "Tickets", "Museum", "Flowers", "Pizza", "Jazz", "Bistro", "Cinema", "Taxi",
    "Harbour", "Laundry", "Gallery", "Florist", "Bookshop", "Arcade", "Observatory", "Greenhouse", "Aquarium",
    "Workshop", "Boutique", "Brewery", "Dumplings", "Sushi", "Tacos", "Gelato", "Espresso", "Vinyl", "Bicycles",
    "Antiques", "Hardware", "Bazaar", "Pottery", "Stationery", "Lighthouse", "Carousel", "Pretzels", "Waffles",
    "Lemonade", "Nebula", "Horizon", "Serendipity", "Wanderlust", "Eureka", "Bonjour", "Hola", "Ciao", "Namaste",
    "VIPO", "ZEBRA", "QUARTZ", "JUNGLE", "ROCKET", "GALAXY", "THUNDER", "PIXEL", "MANGO", "VELVET",
    # short phrases
    "Hello World", "Good Morning", "Fresh Bread", "Fresh Bread Daily", "Moonlight Cafe", "Keep Calm", "Mind the Gap",
    "Welcome Home", "Stay Curious", "Dream Big", "Less is More", "Live Music Tonight", "Closed for Lunch",
    "Back in Five Minutes", "No Parking", "Wet Paint", "Please Knock", "Push", "Pull", "Free Wi-Fi",
    "Ice Cold Lemonade", "Sale 50% Off", "Open 24 Hours", "Est. 1987", "Platform 9", "Room 404", "Exit Only",
    "Staff Only", "Quiet Please", "Watch Your Step", "Beware of the Dog", "Fragile", "This Side Up",
    "Handle With Care", "Do Not Disturb", "Happy New Year", "Merry Christmas", "Congratulations", "Thank You",
    "Best Dad Ever", "World's Best Teacher", "Grand Opening", "Now Hiring", "Sold Out", "Coming Soon",
    "Under Construction", "Lost and Found", "Gate 12", "Bus Stop", "One Way", "Dead End", "Slow Down",
    "School Zone", "Fire Exit", "Lifeguard on Duty", "No Swimming", "Keep Off the Grass", "Bike Lane",
    "Hot Coffee", "Cold Brew", "Fish and Chips", "Noodle Bar", "Green Tea", "Farm Fresh Eggs", "Organic Honey",
    "Homemade Pie", "Soup of the Day", "Happy Hour", "Chef's Special", "Vegan Options", "Cash Only",
    "Take One", "Free Hugs", "Good Vibes Only", "Carpe Diem", "Seize the Day", "Be Kind", "Make Art",
    "Think Big", "Let It Be", "Here Comes the Sun", "Rise and Shine", "Sweet Dreams", "Home Sweet Home",
    "Love You More", "Adventure Awaits", "Follow Your Heart", "Stay Wild", "Wish You Were Here",
    "Greetings from Mars", "Welcome to the Jungle", "Ocean Breeze", "Mountain Air", "Midnight Snack",
    "Sunday Brunch", "Taco Tuesday", "Game Over", "Level Up", "Press Start", "Loading", "Error 404",
    "System Online", "Top Secret", "Deep Space", "Mission Control", "Launch Pad 7", "Apollo 11",
    "Route 66", "Main Street", "Baker Street", "Maple Avenue", "Elm Street", "Sunset Boulevard",
    "The Blue Door", "The Golden Fork", "The Rusty Anchor", "The Velvet Lounge", "The Little Bookshop",
    "The Daily Grind", "The Green Leaf", "The Secret Garden", "The Night Owl", "The Red Lantern",
    "Cafe Paris", "Hotel California", "Pizza Napoli", "Casa Bonita", "Blue Moon Diner", "Starlight Motel",
    "Sunrise Bakery", "Riverside Books", "Oak and Iron", "Salt and Pepper", "Bread and Butter", "Rock and Roll",
    "Peace and Love", "Salt Water Taffy", "Fortune Cookies", "Hot Dogs 2 Dollars", "Lemonade 50 Cents",
    "Apples 3 for 1 Dollar", "Tickets 10 Dollars", "Table for Two", "Reserved", "Out of Order",
    "Self Service", "Help Wanted", "Pay Here", "Order Here", "Pick Up Here", "Ring the Bell", "Smile",
    "Breathe", "Relax", "Focus", "Imagine", "Believe", "Create", "Explore", "Discover", "Inspire",
    "The Quick Brown Fox", "The Quick Brown Fox Jumps Over the Lazy Dog", "All You Need Is Love",
    "To Be or Not to Be", "Once Upon a Time", "The End", "Happily Ever After", "Knowledge Is Power",
    "Time Flies", "Practice Makes Perfect", "Go Team", "Champions 2024", "Class of 2025", "Year 3000",
)

TEXT_SURFACE = (
    "a neon sign", "a chalkboard", "a shop window", "a hand-painted wooden sign", "a coffee mug", "a vintage poster",
    "a street banner", "a white t-shirt", "a billboard", "a paper shopping bag", "a road sign", "a storefront awning",
    "a brick wall mural", "a sticky note", "a canvas tote bag", "a glass door", "a cardboard box", "a laptop sticker",
    "a baseball cap", "a movie theatre marquee", "a classroom blackboard", "a restaurant menu board",
    "a greeting card", "a wooden crate", "a bus stop sign", "a vending machine", "a notebook cover",
    "a pennant flag", "a ceramic tile", "a shipping container", "a skateboard deck", "a doormat",
)

LETTERING = (
    "in bold sans-serif letters", "in thin serif letters", "in flowing cursive script", "in blocky capital letters",
    "in rounded bubble letters", "in art deco letters", "in hand-drawn letters", "in stencilled letters",
    "in vintage typewriter letters", "in gothic blackletter", "in playful handwritten letters",
    "in neat monospaced letters", "in tall narrow letters", "in chunky slab-serif letters",
    "in elegant gold lettering", "in brush-stroke lettering", "in retro pixel letters", "in outlined letters",
)

TEXT_SETTING = (
    "photographed in daylight", "close-up photo", "at night", "on a busy street", "flat lay photo",
    "studio product shot", "3d render", "vector illustration", "shallow depth of field", "on a rainy day",
    "seen from a low angle", "in warm afternoon light",
)

NAME = (
    "Mia", "Leo", "Ava", "Noah", "Zoe", "Sam", "Ella", "Max", "Lily", "Omar", "Nina", "Hugo", "Iris", "Kai",
    "Rosa", "Theo", "Maya", "Finn", "Lena", "Ravi", "Chloe", "Jonas", "Amara", "Felix", "Sofia", "Ben", "Yuki",
    "Aria", "Milo", "Nora", "Ezra", "Luca", "Hana", "Oscar", "Ada", "Tariq", "Elsa", "Jude", "Priya", "Marco",
    "Ines", "Victor", "Grace", "Arlo", "Freya", "Dev", "Clara", "Emil", "Lucy", "Mateo", "Anya", "Otto", "Ruby",
    "Kofi", "June", "Pablo", "Vera", "Aiden", "Esme", "Rafael",
)

ICING = (
    "pink icing", "white icing", "blue icing", "chocolate icing", "green icing", "gold icing", "red icing",
    "purple icing", "yellow icing", "rainbow sprinkles",
)

SHOP_SIGN = (
    "Bakery", "Flowers", "Books", "Coffee", "Barbershop", "Bike Shop", "Ice Cream", "Records", "Tailoring",
    "Noodles", "Pizza", "Hardware", "Pet Shop", "Tea Room", "Antiques",
)

TITLE_ADJ = (
    "Silent", "Hidden", "Last", "Golden", "Forgotten", "Endless", "Crimson", "Secret", "Wandering", "Broken",
    "Midnight", "Invisible", "Distant", "Burning", "Frozen", "Lonely", "Electric", "Ancient", "Little", "Hollow",
    "Restless", "Silver", "Wild", "Painted", "Sleeping", "Quiet", "Lost", "Velvet", "Paper", "Glass",
)

TITLE_NOUN = (
    "Harbour", "Garden", "Kingdom", "Orchard", "Lighthouse", "River", "Library", "Mountain", "Forest", "Island",
    "Clockmaker", "Cartographer", "Letters", "Summer", "Winter", "Voyage", "Sky", "Door", "Map", "Observatory",
    "Circus", "Station", "Ocean", "Comet", "Violin", "Bridge", "Archive", "Meadow", "Compass", "Tide",
)

BOOK_STYLE = (
    "minimalist", "illustrated", "vintage", "hardback", "paperback", "leather-bound", "watercolour", "typographic",
    "science fiction", "mystery novel",
)

# --------------------------------------------------------------------------------------------------
# portrait quality: faces, hands, anatomy, skin (ethnicity-neutral descriptors)

FRAMING = (
    "a close-up portrait", "a half-body portrait", "a candid photo", "a headshot", "an environmental portrait",
    "a full-body photo", "a three-quarter portrait", "a medium close-up portrait",
)

HAND_FRAMING = (
    "a half-body portrait", "a candid photo", "a full-body photo", "a waist-up photo", "a medium shot",
    "a three-quarter portrait",
)

PORTRAIT_PERSON = (
    "a young woman", "a young man", "an elderly woman", "an elderly man", "a teenage girl", "a teenage boy",
    "a middle-aged woman", "a middle-aged man", "a woman in her thirties", "a man in his thirties", "a little girl",
    "a little boy", "a grandmother", "a grandfather", "a young adult", "a woman in her sixties", "a man in his fifties",
    "a young mother", "a young father", "a ten-year-old child",
)

HAIR = (
    "with curly red hair", "with short black hair", "with long wavy brown hair", "with braided hair",
    "with a buzz cut", "with shoulder-length blond hair", "with a messy bun", "with freckles",
    "with round glasses", "with dimples", "with a side part", "with a long ponytail", "with tight curls",
    "with a bob haircut", "with dyed blue hair", "with an undercut", "with a short afro", "with bangs",
    "with a pixie cut", "with tousled hair",
)

EXPRESSION = (
    "smiling warmly", "laughing", "looking thoughtful", "with a serious expression", "looking straight at the camera",
    "glancing to the side", "with a gentle smile", "looking surprised", "with eyes closed", "mid-laugh",
    "looking calm", "squinting in the sun", "with a shy smile", "looking determined", "deep in thought",
)

HANDS = (
    "resting their chin on one hand", "holding a cup with both hands", "waving at the camera", "with arms crossed",
    "counting on five fingers", "playing the piano", "holding a bouquet of flowers", "giving a thumbs up",
    "adjusting a pair of glasses", "tying their shoelaces", "knitting a scarf", "holding a smartphone",
    "shuffling a deck of cards", "peeling an orange", "writing with a fountain pen", "clasping their hands together",
    "making a heart shape with their hands", "holding up a peace sign", "playing an acoustic guitar",
    "holding a paintbrush",
)

CLOTHING = (
    "wearing a knitted sweater", "in a denim jacket", "wearing a linen shirt", "in a tailored suit",
    "wearing a hooded sweatshirt", "in a summer dress", "wearing a wool coat", "in a leather jacket",
    "wearing a turtleneck", "in a raincoat", "wearing a flannel shirt", "in a white t-shirt", "wearing a silk blouse",
    "in a striped top", "wearing a cardigan", "in a sports jersey", "wearing a lab coat", "in a chef's apron",
    "wearing a beanie", "in a trench coat",
)

PORTRAIT_LIGHTING = (
    "soft window light", "golden hour backlight", "Rembrandt lighting", "butterfly lighting", "overcast daylight",
    "studio softbox lighting", "warm tungsten light", "dappled shade", "split lighting", "neon rim light",
    "bright high-key lighting", "candlelight",
)

GROUP = (
    "two friends", "a family of four", "three coworkers", "a grandmother and her grandson", "a father and daughter",
    "two sisters", "a couple in their seventies", "a group of five students", "a mother and her teenage son",
    "two brothers", "a team of three nurses", "four teenagers",
)

GROUP_ACTION = (
    "laughing together", "posing on a sofa", "hugging", "sharing a meal", "holding hands", "taking a selfie",
    "playing a board game", "clapping", "walking side by side", "looking at a photo album", "cooking together",
    "toasting with glasses",
)

PORTRAIT_SETTING = (
    "in a sunny park", "at a kitchen table", "in a photo studio", "on a city street", "in a cozy living room",
    "on a beach", "in a café", "in a garden", "at a train station", "in a library", "on a balcony", "in a forest",
    "in front of a brick wall", "at a wedding", "in a classroom",
)

# --------------------------------------------------------------------------------------------------
# video: motion, camera, quality, temporal order

MOTION = (
    "a skateboarder doing a kickflip", "a figure skater spinning on ice", "ocean waves crashing on rocks",
    "a hummingbird hovering at a flower", "a juggler juggling three balls", "a ballerina performing a pirouette",
    "a basketball player dunking", "a surfer riding a large wave", "a cyclist riding down a mountain trail",
    "a cat jumping onto a kitchen counter", "a flag waving in strong wind", "a ball bouncing down a staircase",
    "leaves falling from a tree in the wind", "a waterfall pouring into a pool", "a kite flying over a beach",
    "a gymnast doing a backflip", "a swimmer doing the butterfly stroke", "a chef flipping a pancake",
    "a child on a swing", "a pendulum swinging back and forth", "dominoes falling in a spiral",
    "a glass of water tipping over and spilling", "a spinning top slowing down and falling over",
    "a paper plane gliding across a room", "a boxer hitting a punching bag", "a dancer doing a cartwheel",
    "a train passing through a station", "a windmill turning slowly", "a jellyfish pulsing through the water",
    "a flock of starlings swirling in the sky", "an eagle landing on a branch", "a squirrel leaping between branches",
    "a kangaroo hopping across the outback", "a cheetah sprinting after a gazelle", "a dolphin leaping out of the sea",
    "a whale breaching the surface", "a snake slithering over sand", "a butterfly landing on a flower",
    "a tennis player serving", "a soccer player kicking a ball into a goal", "a horse jumping over a fence",
    "a rollercoaster climbing and then plunging down", "a steam locomotive pulling out of a station",
    "a sailboat tacking in the wind", "a pizza chef tossing dough in the air", "a bartender shaking a cocktail",
    "a potter raising a clay pot on a wheel", "a blacksmith hammering hot iron", "a drummer playing a fast fill",
    "a pianist's hands playing a fast passage", "a rock climber reaching for a hold",
    "a snowboarder carving down a slope",
    "a skier jumping off a ramp", "a car drifting around a corner", "a motorcycle leaning into a turn",
    "a hot air balloon rising at dawn", "a feather drifting down to the ground", "a soap bubble floating and popping",
    "water droplets splashing into a bowl of milk", "popcorn popping in a pan", "a campfire crackling",
    "smoke curling up from a candle", "sand pouring through an hourglass", "a yo-yo spinning up and down",
    "a parachutist landing in a field", "a frog jumping into a pond", "a duck paddling across a pond",
    "a toddler taking first steps", "a couple dancing a waltz", "a breakdancer spinning on their back",
)

QUADRUPED = (
    "a dog", "a horse", "a deer", "a fox", "a wolf", "a cat", "a goat", "a cheetah", "a bear", "a zebra",
    "a lion", "a moose", "a husky", "a pony",
)

GAIT = ("running", "walking", "trotting", "bounding")

TERRAIN = (
    "across a meadow", "along a beach", "through shallow water", "through deep snow", "across a frozen lake",
    "down a dirt road", "through tall grass", "over a sand dune", "along a forest trail", "across a rocky hillside",
    "through autumn leaves", "along a riverbank", "across a wheat field", "through a misty forest",
)

SPEED = ("in slow motion", "in real time", "in smooth slow motion")

CAMERA = (
    "static camera", "slow dolly in", "slow dolly out", "tracking shot", "slow pan left", "slow pan right",
    "tilt up", "handheld camera", "orbiting camera", "rising crane shot",
    "low-angle tracking shot", "close-up", "wide shot", "slow zoom in", "steadicam follow shot",
)

VIDEO_LIGHT = (
    "golden hour light", "overcast daylight", "at dusk", "soft morning light", "bright midday sun",
    "warm evening light", "cool blue twilight", "at sunrise", "dappled light", "high-contrast light",
)

VIDEO_STYLE = (
    "cinematic", "documentary style", "shot on 35mm film", "realistic", "vibrant colours", "muted colours",
    "high frame rate footage", "4k footage",
)

VIDEO_SCENE = (  # outdoor scenes that any daylight or twilight suits
    "a waterfall in a mossy forest", "a busy city crossing at rush hour", "waves rolling onto a sandy beach",
    "koi fish swimming in a pond", "a field of wheat swaying in the wind", "clouds drifting over mountain peaks",
    "traffic on a highway", "snow falling on a quiet street", "a river flowing through a canyon",
    "a forest of tall pines in fog", "a fountain in a city square", "a carousel turning at a fair",
    "boats rocking in a marina", "a flower field with bees", "a street lined with cherry blossoms in the breeze",
    "a desert with drifting sand", "a mountain stream over smooth stones", "a bustling café terrace",
    "a herd of sheep on a hillside", "a rowing team on a misty river", "a harbour crane loading containers",
    "a sunflower field in the wind", "a railway bridge with a passing train", "a lake reflecting autumn trees",
    "a tide pool with crabs", "a rice terrace with workers", "a vineyard at harvest", "a glacier calving into the sea",
    "a hummingbird feeder in a garden", "a snowy forest with a passing deer", "a city skyline with moving clouds",
    "a windmill farm on rolling hills", "laundry drying on a line in the wind",
    "an airport runway with a plane landing",
    "a cliff path above a stormy sea", "a farmers market with people browsing", "a kite festival on a beach",
    "a canal with passing boats", "tall grass bending in the wind", "a busy pedestrian bridge",
)

LIT_SCENE = (  # scenes that bring their own light: night, indoors, underwater
    "a candle flame in a dark room", "a chef plating a dish in a restaurant kitchen", "a jellyfish in an aquarium",
    "rain running down a window at night", "a night market with glowing lanterns", "a cup of coffee with rising steam",
    "a lighthouse beam sweeping over the sea at night", "fireworks over a harbour", "a cat washing its face on a sofa",
    "a subway train arriving at a platform", "a glassblower shaping molten glass",
    "northern lights over a frozen lake", "a crackling fireplace", "a coral reef with swimming fish",
    "a tea kettle boiling on a stove", "a neon-lit alley in the rain", "a greenhouse with misting sprinklers",
    "ink spreading in water", "a close view of a ticking clock mechanism", "an aquarium with rays gliding",
    "a pottery studio with a spinning wheel", "a street performer juggling fire at night",
    "an old library with dust floating in a sunbeam", "a bakery with bread coming out of the oven",
    "a bonfire on a beach at night", "lanterns floating on a river at night",
    "a city street at night with light trails",
    "a concert crowd under stage lights", "a ballet rehearsal in a mirrored studio", "a diner with flickering neon",
)

MACRO = (
    "dew drops on a spider web", "a bee collecting pollen", "an ant carrying a leaf", "a snail on a wet leaf",
    "a dragonfly on a reed", "frost forming on a window", "bubbles rising in sparkling water",
    "the texture of tree bark", "a ladybug climbing a stem", "a dandelion losing its seeds",
    "raindrops hitting a puddle", "salt crystals growing", "a caterpillar eating a leaf",
    "a butterfly unfolding its wings", "the gears of a wristwatch", "oil paint being mixed on a palette",
    "sugar dissolving in tea", "moss swaying underwater", "a flower opening in time-lapse", "sparks from a grinder",
)

MACRO_CAMERA = (
    "static camera", "slow dolly in", "slow focus pull", "slow pan left", "slow pan right", "extreme close-up",
    "slow zoom in", "locked-off tripod shot",
)

QUALITY = (
    "sharp focus", "crisp 4k detail", "stable exposure", "no flicker", "clean image without compression artefacts",
    "consistent colours throughout", "natural motion blur", "steady frame without jitter", "high dynamic range",
    "smooth gradients without banding", "fine textures preserved", "noise-free shadows", "accurate white balance",
    "rich detail in highlights and shadows", "temporally consistent details", "stable textures without shimmering",
    "true-to-life colours", "razor-sharp edges", "subtle film grain", "ultra high definition",
    "professional colour grading", "broadcast quality",
)

AGENT = (
    "a young woman", "an old man", "a little girl", "a teenage boy", "a middle-aged man", "an elderly woman",
    "a chef", "a man in a suit", "a woman in a red coat", "a boy in a yellow raincoat", "a girl with a ponytail",
    "a man with a beard", "a woman in a green dress", "a jogger", "a waiter", "a student with a backpack",
    "a grandfather", "a young father", "a nurse in scrubs", "a painter in overalls",
)

ACT = (  # third person, present tense; each leaves the agent in frame and able to do the next one
    "waves at the camera", "sits down on a chair", "picks up a red cup", "puts on a hat", "turns around",
    "claps their hands", "puts on a pair of glasses", "opens a book", "drinks from a glass of water",
    "looks up at the sky", "jumps in the air", "raises both arms", "puts on sunglasses", "ties their shoelaces",
    "checks their phone", "smiles at the camera", "nods slowly", "walks forward", "points to the right",
    "writes on a notepad", "bites into an apple", "folds a piece of paper", "takes a photo with a camera",
    "opens an umbrella", "yawns and stretches", "puts on a scarf", "shakes their head", "kneels down",
    "laughs out loud", "blows out a candle", "tosses a ball in the air", "takes off their hat",
)

VIDEO_SETTING = (
    "in a bright living room", "on a city sidewalk", "in a park", "in a kitchen", "on a beach", "in an office",
    "in a library", "on a train platform", "in a garden", "on a snowy street", "in a classroom", "in a café",
    "on a rooftop", "in a forest clearing", "at a bus stop", "in a studio with a white backdrop",
)

SEQUENCE = (
    "a candle is lit and then blown out", "a flower bud opens into a full bloom", "a car stops and a door opens",
    "a kettle boils and steam rises", "a child draws a circle and then colours it in", "the sun sets and stars appear",
    "a glass fills with orange juice and then ice cubes drop in", "a door opens and a dog runs out",
    "an egg cracks and a chick hatches", "a balloon inflates and then pops", "a train arrives and passengers step off",
    "snow starts falling and covers a red car", "a hand writes a word on a chalkboard and then erases it",
    "a cat knocks a pen off a table and then looks at the camera", "a seed sprouts and grows into a seedling",
    "a match is struck and lights a lantern", "the lights in a city turn on one by one at dusk",
    "a boat leaves the harbour and sails out to sea", "a cake rises in the oven and then is taken out",
    "ice melts into a puddle", "a phone rings and a woman answers it", "a bird lands on a feeder and then flies away",
    "a wave washes away a sandcastle", "a chef cracks two eggs into a pan and flips them",
    "a curtain opens to reveal a stage", "clouds gather and rain begins to fall",
    "a paper is folded into a paper plane and thrown", "a bicycle stops and its rider waves",
    "a leaf turns from green to red and falls", "a rocket launches and disappears into the clouds",
    "a gate opens and sheep walk through it", "a coin spins on a table and falls flat",
    "a man pours coffee and then adds milk", "a girl plants a seed and waters it",
    "a drawbridge rises and a ship passes under it", "a jigsaw puzzle is completed piece by piece",
    "a traffic light turns from red to green and cars start moving", "a tree loses its leaves and snow covers it",
    "a dog shakes off water and then rolls in the grass", "the tide comes in and covers a rocky beach",
)

_MOVERS = (
    ("duck swimming across a pond", "ducks swimming across a pond"),
    ("horse galloping across a field", "horses galloping across a field"),
    ("bird flying across the sky", "birds flying across the sky"),
    ("car driving down a road", "cars driving down a road"),
    ("runner racing along a track", "runners racing along a track"),
    ("balloon drifting through the sky", "balloons drifting through the sky"),
    ("sailboat crossing a bay", "sailboats crossing a bay"),
    ("cyclist riding along a coastal road", "cyclists riding along a coastal road"),
    ("dog running along a beach", "dogs running along a beach"),
    ("child running across a playground", "children running across a playground"),
)
COUNTED_MOVER = _counted(_MOVERS)

DIRECTION = ("from left to right", "from right to left", "towards the camera", "away from the camera")

# --------------------------------------------------------------------------------------------------

VOCAB: dict[str, tuple[str, ...]] = {
    "scene": SCENE, "style": STYLE, "lighting": LIGHTING, "palette": PALETTE, "mood": MOOD, "lens": LENS,
    "colour": COLOUR,
    "counted": COUNTED, "counted_a": COUNTED_A, "counted_b": COUNTED_B, "counted_many": COUNTED_MANY,
    "arrangement": ARRANGEMENT, "surface": SURFACE, "view": VIEW, "relation": RELATION, "thing": THING,
    "size": SIZE, "material": MATERIAL, "shape": SHAPE, "position": POSITION, "backdrop": BACKDROP,
    "character": CHARACTER, "wearing": WEARING, "holding": HOLDING, "action_place": ACTION_PLACE,
    "style_short": STYLE_SHORT, "vehicle": VEHICLE, "vehicle_place": VEHICLE_PLACE, "time": TIME, "room": ROOM,
    "furniture": FURNITURE, "decor": DECOR, "person": PERSON, "person_detail": PERSON_DETAIL, "place": PLACE,
    "text": TEXT, "text_surface": TEXT_SURFACE, "lettering": LETTERING, "text_setting": TEXT_SETTING,
    "name": NAME, "icing": ICING, "shop_sign": SHOP_SIGN, "title_adj": TITLE_ADJ, "title_noun": TITLE_NOUN,
    "book_style": BOOK_STYLE,
    "framing": FRAMING, "hand_framing": HAND_FRAMING, "portrait_person": PORTRAIT_PERSON, "hair": HAIR,
    "expression": EXPRESSION, "hands": HANDS, "clothing": CLOTHING, "portrait_lighting": PORTRAIT_LIGHTING,
    "group": GROUP, "group_action": GROUP_ACTION, "portrait_setting": PORTRAIT_SETTING,
    "motion": MOTION, "quadruped": QUADRUPED, "gait": GAIT, "terrain": TERRAIN, "speed": SPEED, "camera": CAMERA,
    "video_light": VIDEO_LIGHT, "video_style": VIDEO_STYLE, "video_scene": VIDEO_SCENE, "lit_scene": LIT_SCENE,
    "macro": MACRO, "macro_camera": MACRO_CAMERA,
    "quality": QUALITY, "agent": AGENT, "act": ACT, "video_setting": VIDEO_SETTING, "sequence": SEQUENCE,
    "counted_mover": COUNTED_MOVER, "direction": DIRECTION,
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "aesthetics": (
        "{scene}, {style}, {lighting}, {palette}",
        "a {style} of {scene}, {lighting}, {mood} atmosphere",
        "a photograph of {scene}, {lens}, {lighting}, {palette}",
    ),
    "composition": (
        "{counted_many} {arrangement} on {surface}, {view}",  # counting
        "{counted} {relation} a {colour} {thing}",  # counting + spatial relation
        "{counted_a} and {counted_b} on {surface}",  # two counts
        "a {colour} {thing} {relation} a {colour2} {thing2}",  # colour binding + relation
        "a {size} {material} {shape} {relation} a {size2} {material2} {shape2}",  # size/material binding
        "a {colour} {shape} in the {position} of the frame and a {colour2} {shape2} in the {position2}, on {backdrop}",
    ),
    "text_image_alignment": (
        "{character} {wearing} and {holding}, {action_place}, {style_short}",
        "a {colour} {vehicle} parked {vehicle_place} {time}, {style_short}",
        "{room} with a {colour} {furniture}, a {colour2} {furniture2} and {decor}",
        "{person} {person_detail} in {place}, {style_short}",
    ),
    "text_rendering": (
        '{text_surface} that says "{text}", {text_setting}',
        'the words "{text}" written {lettering} on {text_surface}',
        '{text_surface} with the text "{text}" {lettering}, {text_setting}',
        'a birthday cake with "Happy Birthday {name}" written in {icing}, {text_setting}',
        'a storefront with a sign that reads "{name}\'s {shop_sign}", {text_setting}',
        'a {book_style} book cover titled "The {title_adj} {title_noun}" {lettering}',
    ),
    "portrait_quality": (
        "{framing} of {portrait_person} {hair}, {expression}, {clothing}, {portrait_lighting}",
        "{hand_framing} of {portrait_person} {hands}, {clothing}, {portrait_lighting}",
        "{framing} of {portrait_person} {hair} {portrait_setting}, {expression}, {portrait_lighting}",
        "a photo of {group} {group_action} {portrait_setting}, {portrait_lighting}",
    ),
    "motion_quality": (
        "{motion}, {camera}, {video_light}",
        "{motion} {speed}, {camera}, {video_light}, {video_style}",
        "{quadruped} {gait} {terrain}, {camera}, {video_light}",
        "{quadruped} {gait} {terrain} {speed}, {camera}, {video_style}",
    ),
    "visual_quality": (
        "{video_scene}, {camera}, {video_light}, {quality}, {quality2}",
        "{lit_scene}, {camera}, {quality}, {quality2}",
        "macro shot of {macro}, {macro_camera}, {quality}, {quality2}",
        "{video_scene}, {video_style}, {video_light}, {quality}",
        "{lit_scene}, {video_style}, {quality}, {quality2}",
    ),
    "video_text_alignment": (
        "{agent} {video_setting} first {act}, then {act2}",
        "{agent} {video_setting} {act}, then {act2}, and finally {act3}",
        "{sequence}, {camera}",
        "{counted_mover}, moving {direction}, {camera}",
    ),
}
