"""The paper's dissection experiments, one absl command each (`python -m ndjax.experiments.<name>`):

  rotation    interpretability is not rotation-invariant (Sec 3.2, Figs 6-8)
  tau_sweep   unique detectors and unit labels as tau loosens (Figs 28-29)
  iou_sweep   unique detectors against the IoU threshold, from saved counts (no forward pass)
  layers      unique detectors per layer (Fig 13)
  networks    networks and supervision side by side (Figs 9, 14)

They call `ndjax.api` and read results through `ndjax.results`; the engine never imports them.
"""
