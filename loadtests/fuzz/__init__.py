"""The fault suite's fuzzer: hostile images and hash lists through the decoders, the importer
and a real server. Run `python -m loadtests.fuzz --help`."""
