# Container images: `make images` builds image-embedder-consumer and image-embedder-serving from
# docker/*.Dockerfile with the legacy builder, tagged with the project version and `dev`.
# Included by the Makefile.
#
# The base image is the Dockerfiles' BASE_IMAGE default (the pinned upstream Python image). When
# it is neither present nor pullable, a stand-in with the same layout is built from Debian
# packages (docker/base/standin.sh: debootstrap + Debian's python3.11) under a local tag, once,
# and the images say so in their org.opencontainers.image.base.name label. Set IMAGE_BASE to use
# another base (no pull attempted when it exists locally).
#
# A CA bundle for the build stage (a proxy's CA): IMAGE_BUILD_CA, else PIP_CERT, else
# SSL_CERT_FILE. It is copied to docker/build-ca/ (git-ignored) and only the build stage reads it.

DOCKER ?= docker
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml | head -n 1)
IMAGE_CONSUMER ?= image-embedder-consumer
IMAGE_SERVING ?= image-embedder-serving
IMAGE_TAGS ?= $(IMAGE_VERSION) dev
# The pinned upstream base: the ARG default of the consumer's Dockerfile (both use the same).
IMAGE_PINNED_BASE := $(shell sed -n 's/^ARG BASE_IMAGE=//p' docker/consumer.Dockerfile)
IMAGE_BASE ?=
# The stand-in's tag names the script that built it, so a changed script builds a new one.
IMAGE_STANDIN_BASE := image-embedder-base:bookworm-python3.11-$(shell sha256sum docker/base/standin.sh | cut -c1-12)
IMAGE_BUILD_CA ?= $(or $(PIP_CERT),$(SSL_CERT_FILE))
IMAGE_PULL_TIMEOUT_S ?= 120
# More `docker build` flags, e.g. --build-arg HTTPS_PROXY=http://proxy:3128 --no-cache.
IMAGE_BUILD_FLAGS ?=

.PHONY: images
images: ## Build the consumer and model-server images (tags: project version and dev)
	@set -euo pipefail; \
	export DOCKER_BUILDKIT=0; \
	$(DOCKER) info >/dev/null 2>&1 || { echo "images: no Docker engine answers ($(DOCKER) info failed)" >&2; exit 1; }; \
	base='$(IMAGE_BASE)'; \
	if [ -z "$$base" ]; then \
		base='$(IMAGE_PINNED_BASE)'; \
		if ! $(DOCKER) image inspect "$$base" >/dev/null 2>&1 \
			&& ! timeout $(IMAGE_PULL_TIMEOUT_S) $(DOCKER) pull -q "$$base" >/dev/null 2>&1; then \
			echo "images: cannot pull $$base; using a stand-in base built from Debian packages: $(IMAGE_STANDIN_BASE)"; \
			base='$(IMAGE_STANDIN_BASE)'; \
			if $(DOCKER) image inspect "$$base" >/dev/null 2>&1; then \
				echo "images: stand-in base $$base already built"; \
			else \
				start=$$SECONDS; \
				bash docker/base/standin.sh "$$base"; \
				echo "images: stand-in base built in $$((SECONDS - start)) s"; \
			fi; \
		fi; \
	elif ! $(DOCKER) image inspect "$$base" >/dev/null 2>&1; then \
		timeout $(IMAGE_PULL_TIMEOUT_S) $(DOCKER) pull -q "$$base" >/dev/null; \
	fi; \
	ca_args=(); \
	if [ -n '$(IMAGE_BUILD_CA)' ]; then \
		[ -f '$(IMAGE_BUILD_CA)' ] || { echo "images: CA bundle $(IMAGE_BUILD_CA) does not exist" >&2; exit 1; }; \
		cmp -s '$(IMAGE_BUILD_CA)' docker/build-ca/ca-bundle.crt || install -m 0644 '$(IMAGE_BUILD_CA)' docker/build-ca/ca-bundle.crt; \
		ca_args=(--build-arg PIP_CERT=/etc/build-ca/ca-bundle.crt); \
	else \
		rm -f docker/build-ca/ca-bundle.crt; \
	fi; \
	for image in consumer serving; do \
		case $$image in consumer) name='$(IMAGE_CONSUMER)';; serving) name='$(IMAGE_SERVING)';; esac; \
		tags=(); for tag in $(IMAGE_TAGS); do tags+=(-t "$$name:$$tag"); done; \
		echo "images: building $$name ($(IMAGE_TAGS)) on $$base"; \
		start=$$SECONDS; \
		log=.cache/images/$$image.log; mkdir -p .cache/images; \
		$(DOCKER) build --file docker/$$image.Dockerfile \
			--build-arg BASE_IMAGE="$$base" "$${ca_args[@]}" $(IMAGE_BUILD_FLAGS) \
			--label org.opencontainers.image.base.name="$$base" \
			--label org.opencontainers.image.version='$(IMAGE_VERSION)' \
			"$${tags[@]}" . >"$$log" 2>&1 \
			|| { tail -n 40 "$$log" >&2; echo "images: building $$name failed (full log: $$log)" >&2; exit 1; }; \
		echo "images: $$name built in $$((SECONDS - start)) s (log: $$log)"; \
	done; \
	for name in $(IMAGE_CONSUMER) $(IMAGE_SERVING); do \
		$(DOCKER) image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$$name" | sed 's/^/images: size of /'; \
	done
