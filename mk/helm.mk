# Helm v3, built from source with the local Go toolchain into .tools/bin (git-ignored).
# Included by the Makefile. The binary is rebuilt only when it is missing or when HELM_VERSION
# changes; a second `make` is a no-op.

HELM_VERSION ?= v3.19.0
GO ?= go
HELM_BIN := .tools/bin/helm
HELM_CHART := helm/image-embedder

# Version of the binary already built (empty when absent), read once per make invocation.
HELM_BUILT_VERSION := $(shell test -x $(HELM_BIN) && $(HELM_BIN) version --template '{{.Version}}' 2>/dev/null)

ifneq ($(HELM_BUILT_VERSION),$(HELM_VERSION))
.tools/bin/helm: .helm-version-changed
.PHONY: .helm-version-changed
endif

.tools/bin/helm:
	@mkdir -p $(@D)
	@echo "building helm $(HELM_VERSION) from source into $@"
	GOBIN=$(CURDIR)/.tools/bin GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
		$(GO) install -trimpath \
		-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION)" \
		helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@touch $@

.PHONY: helm-lint
helm-lint: .tools/bin/helm ## Lint the Helm chart (defaults and every option on)
	$(HELM_BIN) lint --strict $(HELM_CHART)
	$(HELM_BIN) lint --strict $(HELM_CHART) -f $(HELM_CHART)/ci/all-on-keda-values.yaml
	$(HELM_BIN) lint --strict $(HELM_CHART) -f $(HELM_CHART)/ci/all-on-hpa-values.yaml
