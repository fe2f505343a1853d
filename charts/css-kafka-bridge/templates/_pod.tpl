{{/*
The pod template of the bridge, shared by the Deployment and the StatefulSet
(spool.enabled): deploy/base/deployment.yaml's, which scripts/check-chart
compares it with.
*/}}
{{- define "css-kafka-bridge.podTemplate" -}}
{{- $tlsFiles := include "css-kafka-bridge.tlsFiles" . | fromJson }}
metadata:
  labels:
    {{- include "css-kafka-bridge.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # The pods read their settings and secrets at start-up: a change rolls them.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- if not .Values.secrets.existingSecret }}
    checksum/secrets: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- end }}
    {{- if and .Values.kafka.tls.enabled (not .Values.kafka.tls.existingSecret) }}
    checksum/kafka-tls: {{ include (print $.Template.BasePath "/secret-kafka-tls.yaml") . | sha256sum }}
    {{- end }}
    {{- if .Values.metrics.podAnnotations }}
    # For Prometheus' "kubernetes-pods" scrape job (not with a ServiceMonitor too).
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.containerPort | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  automountServiceAccountToken: false
  {{- with .Values.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "css-kafka-bridge.podSecurityContext" . | nindent 4 }}
  {{- if or .Values.spreadAcrossNodes .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- if .Values.spreadAcrossNodes }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "css-kafka-bridge.selectorLabels" . | nindent 10 }}
    {{- end }}
    {{- with .Values.topologySpreadConstraints }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: bridge
      image: {{ include "css-kafka-bridge.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve"]
      ports:
        - name: http
          containerPort: {{ .Values.containerPort }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "css-kafka-bridge.configName" . }}
      {{- /* Keep in step with css-kafka-bridge.podEnvNames (_helpers.tpl). */}}
      env:
        - name: BRIDGE_CALLBACK_KEYS_FILE
          value: /etc/css-kafka-bridge/secrets/callback-keys
        - name: BRIDGE_KAFKA_PROPERTIES_FILE
          value: /etc/css-kafka-bridge/secrets/kafka-client.properties
        - name: BRIDGE_SCHEMA_REGISTRY_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ include "css-kafka-bridge.secretName" . }}
              key: {{ .Values.secrets.keys.schemaRegistryPassword }}
              optional: true
        {{- if .Values.spool.enabled }}
        - name: BRIDGE_SPOOL_DIR
          value: /var/spool/css-kafka-bridge
        - name: BRIDGE_SPOOL_MAX_BYTES
          value: {{ include "css-kafka-bridge.spoolMaxBytes" . | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      volumeMounts:
        - name: secrets
          mountPath: /etc/css-kafka-bridge/secrets
          readOnly: true
        {{- if .Values.spool.enabled }}
        - name: spool
          mountPath: /var/spool/css-kafka-bridge
        {{- end }}
        {{- if $tlsFiles }}
        - name: kafka-tls
          mountPath: {{ include "css-kafka-bridge.tlsDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      # /healthz: the process serves (never depends on Kafka, so a Kafka outage
      # does not restart pods). /readyz: Kafka metadata reachable, schema
      # registered, not draining.
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 2
        failureThreshold: 30
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 10
        timeoutSeconds: 2
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: 5
        timeoutSeconds: 2
        failureThreshold: 2
      lifecycle:
        preStop:
          # Kubernetes' own sleep action: the image has no shell.
          sleep:
            seconds: {{ .Values.preStopSleepSeconds }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- include "css-kafka-bridge.containerSecurityContext" . | nindent 8 }}
  volumes:
    - name: secrets
      secret:
        secretName: {{ include "css-kafka-bridge.secretName" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.secrets.keys.callbackKeys }}
            path: callback-keys
          - key: {{ .Values.secrets.keys.kafkaClientProperties }}
            path: kafka-client.properties
    {{- if $tlsFiles }}
    - name: kafka-tls
      secret:
        secretName: {{ include "css-kafka-bridge.tlsSecretName" . }}
        defaultMode: 0440
        items:
          {{- range $file, $key := $tlsFiles }}
          - key: {{ $key }}
            path: {{ $file }}
          {{- end }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The image's user (distroless "nonroot"); fsGroup: the group of the secret files. */}}
{{- define "css-kafka-bridge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "css-kafka-bridge.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}
