"""Chart, image and script tests: real helm, kubernetes-validate, hadolint, shellcheck."""
