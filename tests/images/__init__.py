"""Tests of the built container images (``scripts/build-images``)."""
