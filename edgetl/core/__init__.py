"""What every stage shares and a Raspberry Pi needs: errors, the format registry, run directories,
image folders and decoding, the console, CPU features, artifact metadata and the runtimes.

Nothing here imports TensorFlow (an import-linter contract checks it): `edgetl predict` and
`edgetl bench` run on the light install.
"""
