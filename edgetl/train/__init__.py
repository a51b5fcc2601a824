"""`edgetl train`: config (options and checks), features (decoding + cached-base features while TensorFlow
imports), qat (quantization-aware training), adapt (BatchNorm adaptation to a new domain), stage (the
command: its phases in order, and the run directory it writes)."""
