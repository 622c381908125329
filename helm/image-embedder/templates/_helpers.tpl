{{/*
Expand the name of the chart.
*/}}
{{- define "image-embedder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
Truncated at 63 characters because some Kubernetes name fields are limited to this (DNS-1123).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "image-embedder.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "image-embedder.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "image-embedder.labels" -}}
helm.sh/chart: {{ include "image-embedder.chart" . }}
{{ include "image-embedder.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: image-embedder
{{- end }}

{{/*
Selector labels
*/}}
{{- define "image-embedder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-embedder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of one component (consumer, model-server, backfill): the Deployments' selectors
must not match each other's pods.
Usage: include "image-embedder.componentSelectorLabels" (list . "consumer")
*/}}
{{- define "image-embedder.componentSelectorLabels" -}}
{{ include "image-embedder.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "image-embedder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-embedder.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the model server's Deployment and Service.
*/}}
{{- define "image-embedder.modelServerName" -}}
{{- printf "%s-model-server" (include "image-embedder.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the digest wins, the tag defaults to appVersion.
Usage: include "image-embedder.image" (list .Values.image .Chart.AppVersion)
*/}}
{{- define "image-embedder.image" -}}
{{- $image := index . 0 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default (index . 1) $image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Triton endpoint of the consumer: the value, else the chart's model server, else grpc://triton:8001.
*/}}
{{- define "image-embedder.tritonUrl" -}}
{{- if .Values.consumer.tritonUrl }}
{{- .Values.consumer.tritonUrl }}
{{- else if .Values.modelServer.enabled }}
{{- printf "grpc://%s:%v" (include "image-embedder.modelServerName" .) .Values.modelServer.ports.grpc }}
{{- else }}
{{- "grpc://triton:8001" }}
{{- end }}
{{- end }}

{{- define "image-embedder.dlqTopic" -}}
{{- default (printf "%s.dlq" .Values.consumer.topic) .Values.consumer.dlqTopic }}
{{- end }}

{{/*
A digest of the Secrets the pods read (through lookup: on install and upgrade against a
cluster; empty under `helm template`), so that `helm upgrade` after a rotation rolls the pods:
librdkafka never reloads a password or a certificate.
*/}}
{{- define "image-embedder.secretsChecksum" -}}
{{- $data := list -}}
{{- range $name := list .Values.kafka.sasl.existingSecret .Values.kafka.tls.existingSecret .Values.milvus.token.existingSecret .Values.triton.tls.existingSecret -}}
{{- if $name -}}
{{- $secret := lookup "v1" "Secret" $.Release.Namespace $name -}}
{{- $data = append $data (dict "name" $name "data" (($secret).data | default dict)) -}}
{{- end -}}
{{- end -}}
{{- $data | toJson | sha256sum -}}
{{- end }}

{{- define "image-embedder.kafkaUsesSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "image-embedder.kafkaUsesTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/*
Fail rendering on contradictory or incomplete values, with a message that says what to change.
Included once, from the consumer Deployment.
*/}}
{{- define "image-embedder.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are mutually exclusive: KEDA creates its own HorizontalPodAutoscaler for the Deployment. Enable only one of them." }}
{{- end }}
{{- if not (has .Values.kafka.securityProtocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) }}
{{- fail (printf "kafka.securityProtocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (got %q)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and (include "image-embedder.kafkaUsesSasl" .) (not .Values.kafka.sasl.existingSecret) }}
{{- fail (printf "kafka.securityProtocol is %s: set kafka.sasl.existingSecret to the Secret holding the SASL username and password" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if not (has .Values.secretsAs (list "files" "env")) }}
{{- fail (printf "secretsAs is %q: use files (Secrets mounted as files, the default) or env" .Values.secretsAs) }}
{{- end }}
{{- if and (include "image-embedder.kafkaUsesSasl" .) (eq .Values.kafka.sasl.mechanism "OAUTHBEARER") (not (and .Values.kafka.sasl.oauth.clientId .Values.kafka.sasl.oauth.tokenEndpointUrl)) }}
{{- fail "kafka.sasl.mechanism is OAUTHBEARER: set kafka.sasl.oauth.clientId and kafka.sasl.oauth.tokenEndpointUrl" }}
{{- end }}
{{- if and .Values.kafka.tls.existingSecret (not (include "image-embedder.kafkaUsesTls" .)) }}
{{- fail "kafka.tls.existingSecret is set but kafka.securityProtocol is not SSL or SASL_SSL" }}
{{- end }}
{{- if and (or .Values.kafka.tls.certKey .Values.kafka.tls.keyKey) (not (and .Values.kafka.tls.certKey .Values.kafka.tls.keyKey)) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (mutual TLS needs both)" }}
{{- end }}
{{- range $name, $value := .Values.consumer.settings }}
{{- if regexMatch "(?i)(password|passwd|secret|token|api_?key|credential|private_?key|sasl_username)" $name }}
{{- fail (printf "consumer.settings.%s looks like a secret: keep it in a Secret and reference it from consumer.extraEnv (valueFrom.secretKeyRef)" $name) }}
{{- end }}
{{- end }}
{{- if .Values.backfill.enabled }}
{{- if not .Values.backfill.group }}
{{- fail "backfill.group is required: the backfill reads with its own consumer group" }}
{{- end }}
{{- if eq .Values.backfill.group .Values.consumer.group }}
{{- fail "backfill.group must differ from consumer.group, or the backfill Job would take partitions from the live consumers" }}
{{- end }}
{{- if and .Values.backfill.until .Values.backfill.untilEnd }}
{{- fail "backfill.until and backfill.untilEnd are exclusive: set backfill.untilEnd=false to stop at backfill.until" }}
{{- end }}
{{- if not (or .Values.backfill.until .Values.backfill.untilEnd) }}
{{- fail "a backfill needs an end: set backfill.until (ISO-8601 time) or backfill.untilEnd=true" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
KEDA's SASL mode for the Kafka scaler.
*/}}
{{- define "image-embedder.kedaSasl" -}}
{{- if .Values.keda.sasl }}
{{- .Values.keda.sasl }}
{{- else }}
{{- $modes := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" }}
{{- $mode := get $modes .Values.kafka.sasl.mechanism }}
{{- if not $mode }}
{{- fail (printf "keda: no KEDA SASL mode for kafka.sasl.mechanism %q; set keda.sasl (plaintext, scram_sha256, scram_sha512, gssapi, oauthbearer)" .Values.kafka.sasl.mechanism) }}
{{- end }}
{{- $mode }}
{{- end }}
{{- end }}

{{/*
Whether the KEDA trigger needs a TriggerAuthentication (SASL credentials or TLS files).
*/}}
{{- define "image-embedder.kedaNeedsAuth" -}}
{{- if or (include "image-embedder.kafkaUsesSasl" .) .Values.kafka.tls.existingSecret }}true{{ end }}
{{- end }}

{{/*
Arguments of `python -m consumer run`.
Usage: include "image-embedder.consumerArgs" (dict "root" . "group" G "topic" T "collection" C
  "from" F "until" U "untilEnd" B "maxRate" R "extraArgs" L)
*/}}
{{- define "image-embedder.consumerArgs" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
- run
- --topic
- {{ .topic | quote }}
- --group
- {{ .group | quote }}
- --collection
- {{ .collection | quote }}
- --triton-url
- {{ include "image-embedder.tritonUrl" $root | quote }}
- --milvus-uri
- {{ $v.consumer.milvusUri | quote }}
- --dlq-topic
- {{ include "image-embedder.dlqTopic" $root | quote }}
- --metrics-port
- {{ $v.metrics.port | quote }}
- --log-format
- {{ $v.consumer.logFormat | quote }}
{{- with .from }}
- --from
- {{ . | quote }}
{{- end }}
{{- with .until }}
- --until
- {{ . | quote }}
{{- end }}
{{- if .untilEnd }}
- --until-end
{{- end }}
{{- with .maxRate }}
- --max-rate
- {{ . | quote }}
{{- end }}
{{- with $v.consumer.model }}
- --model
- {{ . | quote }}
{{- end }}
{{- with $v.consumer.modelVersion }}
- --model-version
- {{ . | quote }}
{{- end }}
{{- with $v.consumer.output }}
- --output
- {{ . | quote }}
{{- end }}
{{- range .extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Environment of the consumer containers: the ConfigMap, then secrets as references only.
*/}}
{{- define "image-embedder.consumerEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "image-embedder.fullname" . }}
env:
  {{- $files := eq .Values.secretsAs "files" }}
  {{- if include "image-embedder.kafkaUsesSasl" . }}
  {{- $sasl := .Values.kafka.sasl }}
  {{- if eq $sasl.mechanism "OAUTHBEARER" }}
  {{- if $files }}
  - name: IMAGE_EMBEDDER_KAFKA_OAUTH_CLIENT_SECRET_FILE
    value: {{ printf "%s/client-secret" $sasl.mountPath | quote }}
  {{- else }}
  - name: IMAGE_EMBEDDER_KAFKA_OAUTH_CLIENT_SECRET
    valueFrom:
      secretKeyRef:
        name: {{ $sasl.existingSecret | quote }}
        key: {{ $sasl.oauth.clientSecretKey | quote }}
  {{- end }}
  {{- else if $files }}
  - name: IMAGE_EMBEDDER_KAFKA_SASL_USERNAME_FILE
    value: {{ printf "%s/username" $sasl.mountPath | quote }}
  - name: IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE
    value: {{ printf "%s/password" $sasl.mountPath | quote }}
  {{- else }}
  - name: IMAGE_EMBEDDER_KAFKA_SASL_USERNAME
    valueFrom:
      secretKeyRef:
        name: {{ $sasl.existingSecret | quote }}
        key: {{ $sasl.usernameKey | quote }}
  - name: IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ $sasl.existingSecret | quote }}
        key: {{ $sasl.passwordKey | quote }}
  {{- end }}
  {{- end }}
  {{- if .Values.milvus.token.existingSecret }}
  {{- if $files }}
  - name: IMAGE_EMBEDDER_MILVUS_TOKEN_FILE
    value: {{ printf "%s/token" .Values.milvus.token.mountPath | quote }}
  {{- else }}
  - name: IMAGE_EMBEDDER_MILVUS_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ .Values.milvus.token.existingSecret | quote }}
        key: {{ .Values.milvus.token.key | quote }}
  {{- end }}
  {{- end }}
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  {{- with .Values.consumer.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Volume mounts and volumes shared by the consumer Deployment and the backfill Job.
*/}}
{{- define "image-embedder.consumerVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: jax-cache
  mountPath: {{ .Values.jaxCache.mountPath }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
{{- if and (eq .Values.secretsAs "files") (include "image-embedder.kafkaUsesSasl" .) }}
- name: kafka-sasl
  mountPath: {{ .Values.kafka.sasl.mountPath }}
  readOnly: true
{{- end }}
{{- if and (eq .Values.secretsAs "files") .Values.milvus.token.existingSecret }}
- name: milvus-token
  mountPath: {{ .Values.milvus.token.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.triton.tls.existingSecret }}
- name: triton-tls
  mountPath: {{ .Values.triton.tls.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "image-embedder.consumerVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
- name: jax-cache
  {{- if .Values.jaxCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.jaxCache.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.jaxCache.sizeLimit }}
  {{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if and (eq .Values.secretsAs "files") (include "image-embedder.kafkaUsesSasl" .) }}
- name: kafka-sasl
  secret:
    secretName: {{ .Values.kafka.sasl.existingSecret }}
    defaultMode: 0440
    items:
      {{- if eq .Values.kafka.sasl.mechanism "OAUTHBEARER" }}
      - key: {{ .Values.kafka.sasl.oauth.clientSecretKey }}
        path: client-secret
      {{- else }}
      - key: {{ .Values.kafka.sasl.usernameKey }}
        path: username
      - key: {{ .Values.kafka.sasl.passwordKey }}
        path: password
      {{- end }}
{{- end }}
{{- if and (eq .Values.secretsAs "files") .Values.milvus.token.existingSecret }}
- name: milvus-token
  secret:
    secretName: {{ .Values.milvus.token.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.milvus.token.key }}
        path: token
{{- end }}
{{- if .Values.triton.tls.existingSecret }}
- name: triton-tls
  secret:
    secretName: {{ .Values.triton.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
