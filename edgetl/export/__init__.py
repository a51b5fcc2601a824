"""`edgetl export`: config (options and checks), context (the run's model, images and reference
predictions), convert (the registry's converters), onnx_int8 and onnx_compact (ONNX rewrites),
artifacts (compaction and embedded metadata), parity (the checks every file passes), requantize and
budget (the int8 size budget: the per-tensor rewrite, and the search for the fewest layers), manifest
(manifest.json), stage (the command)."""
