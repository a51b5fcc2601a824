"""`edgetl export`: config (options and checks), context (the run's model, images and reference
predictions), convert (the registry's converters), onnx_int8 and onnx_compact (ONNX rewrites),
artifacts (compaction and embedded metadata), parity (the checks every file passes), budget (the int8
size budget), stage (the command and the manifest)."""
