{{/* The release's base name: the release name when it already says "alp", else "<release>-alp". */}}
{{- define "alp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A service's objects: "<fullname>-<service>". Call with (dict "root" $ "name" "scheduler"). */}}
{{- define "alp.serviceName" -}}
{{- printf "%s-%s" (include "alp.fullname" .root) .name -}}
{{- end -}}

{{- define "alp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: alp
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component (a service, or a helper such as the migration Job). */}}
{{- define "alp.selectorLabels" -}}
app.kubernetes.io/name: {{ default .root.Chart.Name .root.Values.nameOverride }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "alp.componentLabels" -}}
{{ include "alp.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "alp.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where a service's callers reach it: the stable Service when a router splits requests (the
mesh balances them per request), else the headless Service, whose DNS name lists every ready pod
for the client's own balancing. */}}
{{- define "alp.meshRouted" -}}
{{- if and .Values.rollouts.enabled (ne .Values.rollouts.trafficRouting.router "none") -}}true{{- end -}}
{{- end -}}

{{- define "alp.address" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $host := include "alp.serviceName" . -}}
{{- if include "alp.meshRouted" .root -}}
{{- printf "%s:%d" $host (int $svc.port) -}}
{{- else -}}
{{- printf "%s-headless:%d" $host (int $svc.port) -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key holding a service's database URL; the evaluation PostgreSQL's generated
Secret when that is on. */}}
{{- define "alp.databaseSecret" -}}
{{- if .root.Values.evaluation.postgresql.enabled -}}
{{- printf "%s-evaluation-db" (include "alp.fullname" .root) -}}
{{- else -}}
{{- $db := (index .root.Values.services .name).database -}}
{{- required (printf "services.%s.database.existingSecret: name the Secret holding the PostgreSQL URL (or enable evaluation.postgresql)" .name) $db.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "alp.databaseKey" -}}
{{- if .root.Values.evaluation.postgresql.enabled -}}
{{- .name -}}
{{- else -}}
{{- (index .root.Values.services .name).database.urlKey -}}
{{- end -}}
{{- end -}}

{{- define "alp.redisNodes" -}}
{{- if .Values.evaluation.redis.enabled -}}
{{- $base := printf "%s-redis" (include "alp.fullname" .) -}}
{{- $nodes := list -}}
{{- range $i := until 6 -}}
{{- $nodes = append $nodes (printf "%s-%d.%s:6379" $base $i $base) -}}
{{- end -}}
{{- join "," $nodes -}}
{{- else -}}
{{- join "," .Values.redis.nodes -}}
{{- end -}}
{{- end -}}

{{- define "alp.terminationGracePeriodSeconds" -}}
{{- $s := .Values.server -}}
{{- add (int $s.drainDelaySeconds) (int $s.shutdownGraceSeconds) (int $s.terminationMarginSeconds) -}}
{{- end -}}

{{/* Fails the render with a clear message when the values contradict each other. */}}
{{- define "alp.validate" -}}
{{- range $name, $svc := .Values.services -}}
{{- if gt (int $svc.autoscaling.minReplicas) (int $svc.autoscaling.maxReplicas) -}}
{{- fail (printf "services.%s.autoscaling: minReplicas (%d) is above maxReplicas (%d)" $name (int $svc.autoscaling.minReplicas) (int $svc.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if gt (int $svc.database.minConnections) (int $svc.database.maxConnections) -}}
{{- fail (printf "services.%s.database: minConnections (%d) is above maxConnections (%d)" $name (int $svc.database.minConnections) (int $svc.database.maxConnections)) -}}
{{- end -}}
{{- range $svc.calls -}}
{{- if not (hasKey $.Values.services .) -}}
{{- fail (printf "services.%s.calls: %q is not one of the services" $name .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A service's environment (a ConfigMap; pods roll when its checksum changes). */}}
{{- define "alp.config" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values.services .name -}}
ALP_LISTEN: {{ printf "0.0.0.0:%d" (int $svc.port) | quote }}
ALP_METRICS_LISTEN: {{ printf "0.0.0.0:%d" (int $root.Values.server.metricsPort) | quote }}
ALP_LOG_FORMAT: {{ $root.Values.log.format | quote }}
ALP_LOG: {{ $root.Values.log.level | quote }}
ALP_DRAIN_DELAY: {{ printf "%ds" (int $root.Values.server.drainDelaySeconds) | quote }}
ALP_SHUTDOWN_GRACE: {{ printf "%ds" (int $root.Values.server.shutdownGraceSeconds) | quote }}
ALP_MAX_IN_FLIGHT: {{ $root.Values.server.maxInFlight | quote }}
ALP_DB_MAX_CONNECTIONS: {{ $svc.database.maxConnections | quote }}
ALP_DB_MIN_CONNECTIONS: {{ $svc.database.minConnections | quote }}
{{- with include "alp.redisNodes" $root }}
ALP_REDIS_NODES: {{ . | quote }}
ALP_REDIS_POOL_SIZE: {{ $root.Values.redis.poolSize | quote }}
ALP_REDIS_COMMAND_TIMEOUT: {{ $root.Values.redis.commandTimeout | quote }}
{{- end }}
{{- range $svc.calls }}
ALP_{{ upper . }}_ADDR: {{ include "alp.address" (dict "root" $root "name" .) | quote }}
{{- end }}
{{- if and $svc.calls (include "alp.meshRouted" $root) }}
# The address is the mesh's: watching its health would follow one pod behind the proxy.
ALP_DOWNSTREAM_HEALTH_WATCH: "false"
{{- end }}
{{- end -}}

{{/* The pod template of a service, shared by its Rollout and its Deployment. */}}
{{- define "alp.podTemplate" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := index $root.Values.services $name -}}
metadata:
  # No chart version here: a chart upgrade alone must not start a canary.
  labels:
    {{- include "alp.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/part-of: alp
    app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
  annotations:
    checksum/config: {{ include "alp.config" . | sha256sum }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $root.Values.server.metricsPort | quote }}
    prometheus.io/path: /metrics
spec:
  serviceAccountName: {{ include "alp.serviceName" . }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ include "alp.terminationGracePeriodSeconds" $root }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $root.Values.topologySpread }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "alp.selectorLabels" . | nindent 10 }}
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "alp.selectorLabels" . | nindent 10 }}
  {{- end }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $root.Values.evaluation.postgresql.enabled }}
  # Evaluation only: the release's own database appears with the release, so the pods migrate it.
  initContainers:
    - name: migrate
      image: {{ include "alp.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: [migrate, {{ $name }}]
      env:
        {{- include "alp.databaseEnv" . | nindent 8 }}
        - name: ALP_DB_MAX_CONNECTIONS
          value: "2"
        - name: ALP_DB_MIN_CONNECTIONS
          value: "0"
      resources:
        {{- toYaml $root.Values.migrations.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
  {{- end }}
  containers:
    - name: {{ $name }}
      image: {{ include "alp.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: [serve, {{ $name }}]
      ports:
        - name: grpc
          containerPort: {{ $svc.port }}
          protocol: TCP
        - name: http-metrics
          containerPort: {{ $root.Values.server.metricsPort }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "alp.serviceName" . }}
      env:
        {{- include "alp.databaseEnv" . | nindent 8 }}
        {{- if dig "resources" "requests" "cpu" "" $svc }}
        # The runtime's workers by the pod's CPU request, rounded up, not by the node's cores:
        # more workers than cores to run on keep waking each other (docs/performance.md).
        - name: TOKIO_WORKER_THREADS
          valueFrom:
            resourceFieldRef:
              containerName: {{ $name }}
              resource: requests.cpu
              divisor: "1"
        {{- end }}
        {{- with $svc.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      # Ready while the service's own database answers; NOT_SERVING from the first moment of a drain.
      readinessProbe:
        grpc:
          port: {{ $svc.port }}
          service: {{ $svc.healthService }}
        periodSeconds: 2
        failureThreshold: 2
        timeoutSeconds: 1
      # Alive whenever the server answers, whatever its dependencies: an outage is no reason to restart.
      livenessProbe:
        grpc:
          port: {{ $svc.port }}
          service: {{ printf "%s/live" $svc.healthService }}
        periodSeconds: 10
        failureThreshold: 3
        timeoutSeconds: 2
      startupProbe:
        grpc:
          port: {{ $svc.port }}
          service: {{ printf "%s/live" $svc.healthService }}
        periodSeconds: 1
        failureThreshold: 60
      resources:
        {{- toYaml $svc.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
{{- end -}}

{{- define "alp.databaseEnv" -}}
- name: ALP_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "alp.databaseSecret" . }}
      key: {{ include "alp.databaseKey" . }}
{{- end -}}
