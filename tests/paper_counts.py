"""The papers' and torchvision's exact figures every model is checked against (docs/reference.md gives each one's
source): tests/test_model_sizes.py checks the models, tests/test_draw.py the figures drawn of them."""

# Trainable parameters (BatchNorm running statistics excluded), as the papers and torchvision give them.
PARAMS = {
  "lenet5": 60_000,
  "alexnet": 60_965_224,
  "alexnet_torchvision": 61_100_840,
  "vgg11": 132_863_336,
  "vgg13": 133_047_848,
  "vgg16": 138_357_544,
  "vgg19": 143_667_240,
  "vgg11_bn": 132_868_840,
  "vgg13_bn": 133_053_736,
  "vgg16_bn": 138_365_992,
  "vgg19_bn": 143_678_248,
  "googlenet": 6_998_552,
  "googlenet_torchvision": 6_624_904,
  "resnet18": 11_689_512,
  "resnet34": 21_797_672,
  "resnet50": 25_557_032,
  "resnet101": 44_549_160,
  "resnet152": 60_192_808,
  "plain18": 11_515_688,
  "plain34": 21_623_848,
  "resnet20": 269_722,
  "resnet32": 464_154,
  "resnet44": 658_586,
  "resnet56": 853_018,
  "resnet110": 1_727_962,
  "resnet1202": 19_421_274,
}


# Multiply-adds at the paper input: conv + dense only, padding included (torchvision's `_ops`, the ResNet paper's
# FLOPs).
MACS = {
  "lenet5": 326_520,
  "alexnet": 724_406_816,
  "alexnet_torchvision": 714_188_480,
  "vgg11": 7_609_090_048,
  "vgg13": 11_308_466_176,
  "vgg16": 15_470_264_320,
  "vgg19": 19_632_062_464,
  "googlenet": 1_582_671_872,
  "googlenet_torchvision": 1_498_376_192,
  "resnet18": 1_814_073_344,
  "resnet34": 3_663_761_408,
  "plain34": 3_644_493_824,
  "resnet50": 3_857_973_248,
  "resnet101": 7_570_194_432,
  "resnet152": 11_282_415_616,
  "resnet20": 40_551_040,
  "resnet56": 125_485_696,
}
