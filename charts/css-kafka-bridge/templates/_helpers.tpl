{{/*
Names. The release "css-kafka-bridge" gets the names of deploy/base:
css-kafka-bridge, css-kafka-bridge-config, css-kafka-bridge-secrets.
*/}}
{{- define "css-kafka-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "css-kafka-bridge.fullname" -}}
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

{{- define "css-kafka-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "css-kafka-bridge.labels" -}}
helm.sh/chart: {{ include "css-kafka-bridge.chart" . }}
{{ include "css-kafka-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ include "css-kafka-bridge.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The pods of the bridge: what the Service, the PDB and the spread select. */}}
{{- define "css-kafka-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "css-kafka-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "css-kafka-bridge.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "css-kafka-bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "css-kafka-bridge.tag" .) }}
{{- end }}

{{- define "css-kafka-bridge.configName" -}}
{{- printf "%s-config" (include "css-kafka-bridge.fullname" .) }}
{{- end }}

{{- define "css-kafka-bridge.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "css-kafka-bridge.fullname" .)) }}
{{- end }}

{{- define "css-kafka-bridge.tlsSecretName" -}}
{{- .Values.kafka.tls.existingSecret | default (printf "%s-kafka-tls" (include "css-kafka-bridge.fullname" .)) }}
{{- end }}

{{- define "css-kafka-bridge.tlsDir" -}}
/etc/css-kafka-bridge/kafka-tls
{{- end }}

{{/*
The TLS files mounted for librdkafka, as a dict file name -> Secret key (the
created Secret's keys are the file names).
*/}}
{{- define "css-kafka-bridge.tlsFiles" -}}
{{- $tls := .Values.kafka.tls }}
{{- $files := dict }}
{{- if $tls.enabled }}
{{- if $tls.existingSecret }}
{{- range $file, $field := dict "ca.crt" "ca" "tls.crt" "cert" "tls.key" "key" }}
{{- with get $tls.existingSecretKeys $field }}{{ $_ := set $files $file . }}{{ end }}
{{- end }}
{{- else }}
{{- range $file, $field := dict "ca.crt" "ca" "tls.crt" "cert" "tls.key" "key" }}
{{- if get $tls $field }}{{ $_ := set $files $file $file }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{/* BRIDGE_KAFKA_PROPERTIES: kafka.properties plus the TLS files' locations. */}}
{{- define "css-kafka-bridge.kafkaProperties" -}}
{{- $props := list }}
{{- with .Values.kafka.properties }}{{ $props = append $props . }}{{ end }}
{{- $files := include "css-kafka-bridge.tlsFiles" . | fromJson }}
{{- $dir := include "css-kafka-bridge.tlsDir" . }}
{{- range $file, $prop := dict "ca.crt" "ssl.ca.location" "tls.crt" "ssl.certificate.location" "tls.key" "ssl.key.location" }}
{{- if hasKey $files $file }}{{ $props = append $props (printf "%s=%s/%s" $prop $dir $file) }}{{ end }}
{{- end }}
{{- join ";" $props }}
{{- end }}

{{/* A Kubernetes quantity (2Gi, 500M, 1073741824) in bytes. */}}
{{- define "css-kafka-bridge.bytes" -}}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- $number := regexFind "^[0-9]+" . }}
{{- $unit := regexReplaceAll "^[0-9]+" . "" }}
{{- mul ($number | int64) (get $units $unit) }}
{{- end }}

{{/* BRIDGE_SPOOL_MAX_BYTES: spool.maxBytes, or 85% of the volume. */}}
{{- define "css-kafka-bridge.spoolMaxBytes" -}}
{{- if .Values.spool.maxBytes }}
{{- .Values.spool.maxBytes | int64 }}
{{- else }}
{{- div (mul (include "css-kafka-bridge.bytes" .Values.spool.size | int64) 85) 100 }}
{{- end }}
{{- end }}

{{/*
The egress rules of the NetworkPolicies (the bridge's and the drain Job's): DNS,
then networkPolicy.egress. DNS to any address on port 53: the resolver may be
CoreDNS pods, NodeLocal DNSCache's link-local address or a node's, whose labels
and namespaces differ between clusters.
*/}}
{{- define "css-kafka-bridge.networkPolicyEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- with .Values.networkPolicy.egress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- /* The settings the chart writes to the ConfigMap from values of its own,
       NAME: text (config.extra is added to them there). */ -}}
{{- define "css-kafka-bridge.configData" -}}
{{- $v := .Values }}
{{- $data := dict
  "BRIDGE_LOG_FORMAT" $v.config.logFormat
  "RUST_LOG" $v.config.logLevel
  "BRIDGE_KAFKA_BROKERS" $v.kafka.brokers
  "BRIDGE_KAFKA_TOPIC" $v.kafka.topic
  "BRIDGE_KAFKA_ACK_TIMEOUT_MS" ($v.kafka.ackTimeoutMs | int64)
  "BRIDGE_KAFKA_MAX_IN_FLIGHT_RECORDS" ($v.kafka.maxInFlightRecords | int64)
  "BRIDGE_KAFKA_MAX_IN_FLIGHT_BYTES" ($v.kafka.maxInFlightBytes | int64)
  "BRIDGE_LISTEN" (printf "0.0.0.0:%d" ($v.containerPort | int64))
  "BRIDGE_MAX_CLOCK_SKEW_SECS" ($v.config.maxClockSkewSecs | int64)
  "BRIDGE_MAX_BODY_BYTES" ($v.config.maxBodyBytes | int64)
  "BRIDGE_MAX_IN_FLIGHT" ($v.config.maxInFlight | int64)
  "BRIDGE_MAX_IN_FLIGHT_BODY_BYTES" ($v.config.maxInFlightBodyBytes | int64)
  "BRIDGE_RETRY_AFTER_SECS" ($v.config.retryAfterSecs | int64)
  "BRIDGE_BODY_READ_TIMEOUT_SECS" ($v.config.bodyReadTimeoutSecs | int64)
  "BRIDGE_SHUTDOWN_DELAY_SECS" ($v.config.shutdownDelaySecs | int64)
  "BRIDGE_DRAIN_TIMEOUT_SECS" ($v.config.drainTimeoutSecs | int64)
}}
{{- /* Left out when empty: the bridge refuses an empty property. */}}
{{- with include "css-kafka-bridge.kafkaProperties" . }}{{ $_ := set $data "BRIDGE_KAFKA_PROPERTIES" . }}{{ end }}
{{- with $v.kafka.deadLetterTopic }}{{ $_ := set $data "BRIDGE_DEAD_LETTER_TOPIC" . }}{{ end }}
{{- with $v.schemaRegistry.url }}
{{- $_ := set $data "BRIDGE_SCHEMA_REGISTRY_URL" . }}
{{- $_ := set $data "BRIDGE_SCHEMA_REGISTRY_SUBJECT_STRATEGY" $v.schemaRegistry.subjectStrategy }}
{{- $_ := set $data "BRIDGE_SCHEMA_REGISTRY_AUTO_REGISTER" $v.schemaRegistry.autoRegister }}
{{- with $v.schemaRegistry.username }}{{ $_ := set $data "BRIDGE_SCHEMA_REGISTRY_USERNAME" . }}{{ end }}
{{- with $v.schemaRegistry.caFile }}{{ $_ := set $data "BRIDGE_SCHEMA_REGISTRY_CA_FILE" . }}{{ end }}
{{- end }}
{{- $text := dict }}
{{- range $name, $value := $data }}{{ $_ := set $text $name ($value | toString) }}{{ end }}
{{- toJson $text }}
{{- end }}

{{- /* The variables the pods' env sets beside the ConfigMap (_pod.tpl): keep
       in step with it. */ -}}
{{- define "css-kafka-bridge.podEnvNames" -}}
{{- $names := list "BRIDGE_CALLBACK_KEYS_FILE" "BRIDGE_KAFKA_PROPERTIES_FILE" "BRIDGE_SCHEMA_REGISTRY_PASSWORD" }}
{{- if .Values.spool.enabled }}
{{- $names = concat $names (list "BRIDGE_SPOOL_DIR" "BRIDGE_SPOOL_MAX_BYTES") }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/*
What values.schema.json cannot say: checked at render time, all problems in one
message, each naming its value.
*/}}
{{- define "css-kafka-bridge.validate" -}}
{{- $v := .Values }}
{{- $errors := list }}
{{- if not $v.kafka.brokers }}
{{- $errors = append $errors "kafka.brokers is required: the Kafka bootstrap servers, host:port,host:port" }}
{{- end }}
{{- if and (not $v.secrets.existingSecret) (not $v.secrets.callbackKeys) }}
{{- $errors = append $errors "secrets.callbackKeys is required (the CSS callback key, as a list), or name an existing Secret holding it in secrets.existingSecret" }}
{{- end }}
{{- $budget := add $v.preStopSleepSeconds $v.config.shutdownDelaySecs $v.config.drainTimeoutSecs }}
{{- if ge (int $budget) (int $v.terminationGracePeriodSeconds) }}
{{- $errors = append $errors (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + config.shutdownDelaySecs + config.drainTimeoutSecs (%v), or pods are killed mid-drain" $v.terminationGracePeriodSeconds $budget) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- $errors = append $errors (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" $v.autoscaling.minReplicas $v.autoscaling.maxReplicas) }}
{{- end }}
{{- if $v.kafka.tls.enabled }}
{{- $files := include "css-kafka-bridge.tlsFiles" . | fromJson }}
{{- $where := ternary "kafka.tls.existingSecretKeys" "kafka.tls" (not (empty $v.kafka.tls.existingSecret)) }}
{{- if not $files }}
{{- $errors = append $errors (printf "kafka.tls.enabled needs at least one file: %s.ca, .cert or .key" $where) }}
{{- else if ne (hasKey $files "tls.crt") (hasKey $files "tls.key") }}
{{- $errors = append $errors (printf "%s.cert and %s.key go together (mutual TLS needs both)" $where $where) }}
{{- end }}
{{- end }}
{{- if $v.spool.enabled }}
{{- if gt ($v.kafka.ackTimeoutMs | int64) 16000 }}
{{- $errors = append $errors (printf "kafka.ackTimeoutMs (%v) must be 16000 or less with spool.enabled: a spool write may take up to 3 s after it, and CSS waits about 20 s" $v.kafka.ackTimeoutMs) }}
{{- end }}
{{- if not $v.spool.size }}
{{- $errors = append $errors "spool.size is required with spool.enabled: the size of each replica's spool volume, e.g. 2Gi" }}
{{- else }}
{{- $size := include "css-kafka-bridge.bytes" $v.spool.size | int64 }}
{{- $max := include "css-kafka-bridge.spoolMaxBytes" . | int64 }}
{{- if gt (mul $max 10) (mul $size 9) }}
{{- $errors = append $errors (printf "spool.maxBytes (%v) must leave the filesystem room: at most 90%% of spool.size (%s)" $max $v.spool.size) }}
{{- end }}
{{- if lt $max 1048576 }}
{{- $errors = append $errors (printf "spool.maxBytes (%v) must be at least 1 MiB (1048576): raise spool.size (%s) or spool.maxBytes" $max $v.spool.size) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.spool.drainJob.enabled (kindIs "invalid" $v.spool.drainJob.ordinal) }}
{{- $errors = append $errors "spool.drainJob.ordinal is required with spool.drainJob.enabled: the ordinal of the replica whose volume spool-<fullname>-<ordinal> to drain" }}
{{- end }}
{{- if and $v.schemaRegistry.url (not $v.secrets.existingSecret) $v.secrets.schemaRegistryPassword (not $v.schemaRegistry.username) }}
{{- $errors = append $errors "schemaRegistry.username is required with secrets.schemaRegistryPassword: the bridge refuses a registry password without a user (it would not be sent)" }}
{{- end }}
{{- /* A setting the chart writes itself, repeated in config.extra, would be
       replaced (or, for the pods' own env, ignored) without a word. */}}
{{- $chartSets := include "css-kafka-bridge.configData" . | fromJson }}
{{- $podEnv := include "css-kafka-bridge.podEnvNames" . | fromJsonArray }}
{{- range $name, $_ := $v.config.extra }}
{{- if hasKey $chartSets $name }}
{{- $errors = append $errors (printf "config.extra.%s: the chart sets %s itself, from the value whose comment in values.yaml names it; set that value instead" $name $name) }}
{{- else if has $name $podEnv }}
{{- $errors = append $errors (printf "config.extra.%s: the chart sets %s in the pods' env itself (for secrets and the spool), which takes precedence over the ConfigMap" $name $name) }}
{{- end }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.egress) }}
{{- $errors = append $errors "networkPolicy.egress is required with networkPolicy.enabled: the rules (to, ports) that let the pods reach every Kafka broker (and the Schema Registry, if any); DNS is allowed already" }}
{{- end }}
{{- if $errors }}
{{- fail (printf "\n\nInvalid values:\n  - %s\n" (join "\n  - " $errors)) }}
{{- end }}
{{- end }}

{{/*
The drain Job's volume: that of the replica gone for good.
*/}}
{{- define "css-kafka-bridge.spoolDrainClaim" -}}
{{- printf "spool-%s-%v" (include "css-kafka-bridge.fullname" .) .Values.spool.drainJob.ordinal }}
{{- end }}

{{/*
The drain Job's image tag: a spool written under another schema is drained by
the version that wrote it.
*/}}
{{- define "css-kafka-bridge.spoolDrainTag" -}}
{{- .Values.spool.drainJob.image.tag | default (include "css-kafka-bridge.tag" .) }}
{{- end }}

{{/*
The drain Job's name: <fullname>-spool-drain and a hash of its spec, within
the 63 characters of a label value (Kubernetes labels the pods with it).
*/}}
{{- define "css-kafka-bridge.spoolDrainJobName" -}}
{{- $prefix := printf "%s-spool-drain" (include "css-kafka-bridge.fullname" .) | trunc 54 | trimSuffix "-" }}
{{- printf "%s-%s" $prefix (include "css-kafka-bridge.spoolDrainJobSpec" . | sha256sum | trunc 8) }}
{{- end }}
