#!/usr/bin/env bash
# The toolbox figures of docs/viz/, each one CLI line (run from the repository root, after the
# README's first command). RESULTS: a VGG16 ImageNet dissection run folder with conv3_3 and
# conv5_3 (here: the layers experiment's, 1,000 composite images; the main job's
# ndjax_results/vgg16_imagenet/conv5_3 serves as well).
set -euo pipefail
RESULTS=${RESULTS:-ndjax_experiments/layers/runs/vgg16_imagenet}
OUT=${OUT:-docs/viz}
V=".venv/bin/python -m ndjax.viz"
t() { local s=$SECONDS; "$@"; echo "  [$((SECONDS - s)) s] $*" >&2; }
# class-based methods: the real MobileNetV2 ImageNet classifier, scikit-image's photos
t $V saliency  --model=mobilenet_v2 --images=chelsea,coffee,astronaut --outdir=$OUT
t $V occlusion --model=mobilenet_v2 --images=chelsea,coffee --window=48 --stride=8 --outdir=$OUT
t $V gradcam   --model=mobilenet_v2 --images=chelsea,coffee,astronaut --outdir=$OUT
t $V cam       --model=mobilenet_v2 --images=chelsea,coffee,astronaut --outdir=$OUT
t $V class_model --model=mobilenet_v2 --target=goldfish --size=128 --outdir=$OUT
# unit-based methods: the VGG16 ImageNet trunk
t $V guided    --model=vgg16 --layer=conv5_3 --unit=92 --images=chelsea,coffee --outdir=$OUT
t $V deconvnet --model=vgg16 --layer=conv5_3 --unit=92 --images=chelsea,coffee --outdir=$OUT
t $V class_model --model=vgg16 --layer=conv5_3 --unit=92 --size=128 --outdir=$OUT
t $V inversion --model=vgg16 --layer=conv5_3 --images=chelsea --size=112 --outdir=$OUT
t $V deepdream --model=vgg16 --layer=conv4_3 --images=chelsea --outdir=$OUT
t $V tsne      --model=vgg16 --layer=conv5_3 --probe_images=400 --outdir=$OUT
# from dissection result folders: no forward pass
t $V patches   --results=$RESULTS/conv3_3,$RESULTS/conv5_3 --outdir=$OUT
t $V concepts  --results=$RESULTS --outdir=$OUT
t $V concept_units --results=$RESULTS --concept=vehicle --outdir=$OUT
t $V filtering --results=$RESULTS --concept=mammal --outdir=$OUT
t $V parts     --results=$RESULTS --outdir=$OUT
