"""The applications built on the core: ablation grid, benchmark, quantisation, XD-Violence
recipe, demo, the camera server and the Ray extraction engine. The core never imports them;
this package imports nothing itself (importing one application loads only what it needs)."""
