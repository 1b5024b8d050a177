{{/*
Names, labels and the pieces both roles' pods share.
*/}}

{{- define "collab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; role objects append -gateway or -room-node. */}}
{{- define "collab.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "collab.gateway.fullname" -}}
{{- printf "%s-gateway" (include "collab.fullname" .) -}}
{{- end -}}

{{- define "collab.roomNode.fullname" -}}
{{- printf "%s-room-node" (include "collab.fullname" .) -}}
{{- end -}}

{{- define "collab.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "collab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "collab.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: collab
{{- end -}}

{{/* Selector labels of one role: (dict "root" $ "component" "gateway"). */}}
{{- define "collab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "collab.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "collab.componentLabels" -}}
{{ include "collab.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "collab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "collab.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "collab.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "collab.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "collab.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the JWT secret, and its key. */}}
{{- define "collab.jwtSecretName" -}}
{{- if .Values.auth.jwtSecret -}}
{{- printf "%s-jwt" (include "collab.fullname" .) -}}
{{- else -}}
{{- .Values.auth.existingSecret -}}
{{- end -}}
{{- end -}}

{{/*
The gateways' token keys as environment: COLLAB_JWT_SECRET from the
Secret, if there is one, and COLLAB_AUTH__JWKS naming the mounted
ConfigMap, if there is one. Without either nothing could be verified.
*/}}
{{- define "collab.authEnv" -}}
{{- $jwksUrl := dig "auth" "jwks" "" (.Values.config | default dict) -}}
{{- if and .Values.auth.jwksConfigMap $jwksUrl -}}
{{- fail "auth.jwksConfigMap and config.auth.jwks both name a JWKS: keep one" -}}
{{- end -}}
{{- if not (or (include "collab.jwtSecretName" .) .Values.auth.jwksConfigMap $jwksUrl) -}}
{{- fail "the gateways need keys to check tokens with: auth.existingSecret (or auth.jwtSecret), auth.jwksConfigMap or config.auth.jwks" -}}
{{- end -}}
{{- if include "collab.jwtSecretName" . }}
- name: COLLAB_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "collab.jwtSecretName" . }}
      key: {{ include "collab.jwtSecretKey" . }}
{{- end }}
{{- if .Values.auth.jwksConfigMap }}
- name: COLLAB_AUTH__JWKS
  value: {{ printf "file:/etc/collab/jwks/%s" .Values.auth.jwksConfigMapKey | quote }}
{{- end }}
{{- end -}}

{{- define "collab.jwtSecretKey" -}}
{{- if .Values.auth.jwtSecret -}}jwt-secret{{- else -}}{{ .Values.auth.existingSecretKey }}{{- end -}}
{{- end -}}

{{/*
The chart's settings as COLLAB_* variables: each key of .Values.config,
nested keys joined with "__", upper-cased (the rule of config/collab.toml).
Called with (dict "prefix" "COLLAB_" "config" .Values.config).
*/}}
{{- define "collab.configEnv" -}}
{{- $prefix := .prefix -}}
{{- range $key, $value := .config }}
{{- $name := printf "%s%s" $prefix (upper $key) }}
{{- if kindIs "map" $value }}
{{- include "collab.configEnv" (dict "prefix" (printf "%s__" $name) "config" $value) }}
{{- else if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ include "collab.scalar" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A scalar as the server parses it: whole numbers without an exponent (YAML
numbers reach the templates as floats, and 1048576 would print as
1.048576e+06).
*/}}
{{- define "collab.scalar" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* NAME: value or NAME: {valueFrom: ...} as container env entries. */}}
{{- define "collab.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
{{- if kindIs "map" $value }}
  {{- toYaml $value | nindent 2 }}
{{- else }}
  value: {{ include "collab.scalar" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The environment both roles share, then the role's own extras. */}}
{{- define "collab.commonEnv" -}}
- name: COLLAB_CLUSTER__NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: COLLAB_CLUSTER__NATS_URL
  value: {{ required "nats.url is required" .Values.nats.url | quote }}
- name: COLLAB_STORE
  value: {{ required "store.url is required" .Values.store.url | quote }}
{{- with .Values.redis.url }}
- name: COLLAB_REDIS
  value: {{ . | quote }}
{{- end }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- include "collab.configEnv" (dict "prefix" "COLLAB_" "config" .Values.config) }}
{{- include "collab.extraEnv" .Values.extraEnv }}
{{- end -}}

{{/* The drain grace the servers are given (the server's default is 10 s). */}}
{{- define "collab.drainGraceSecs" -}}
{{- $config := .Values.config | default dict -}}
{{- if hasKey $config "drain_grace_secs" -}}{{ $config.drain_grace_secs | int }}{{- else -}}10{{- end -}}
{{- end -}}

{{/*
A role's termination grace period, refused unless it leaves the process
time to drain: (dict "root" $ "role" "roomNode" "seconds" N).
*/}}
{{- define "collab.terminationGracePeriod" -}}
{{- $drain := include "collab.drainGraceSecs" .root | int -}}
{{- $grace := .seconds | int -}}
{{- if le $grace (add $drain 4) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed config.drain_grace_secs (%d) by at least 5 s, or the pod is killed while it still drains" .role $grace $drain) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/* The pod security context of both roles (fixed: see values.yaml). */}}
{{- define "collab.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "collab.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The probes of one role on the named port: (dict "root" $ "port" "http").
/healthz answers while the process runs; /readyz says whether it serves
(and fails from SIGTERM on).
*/}}
{{- define "collab.probes" -}}
{{- $p := .root.Values.probes -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end -}}

{{/* Soft anti-affinity and spread over nodes for one role, unless set. */}}
{{- define "collab.scheduling" -}}
{{- $values := .values -}}
{{- if $values.affinity }}
affinity:
  {{- toYaml $values.affinity | nindent 2 }}
{{- else }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "collab.selectorLabels" . | nindent 14 }}
{{- end }}
{{- if $values.topologySpread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "collab.selectorLabels" . | nindent 8 }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* The egress every role gets: DNS, NATS, the store, the extras. */}}
{{- define "collab.commonEgress" -}}
{{- $np := .Values.networkPolicy -}}
- to:
    {{- toYaml $np.dns.to | nindent 4 }}
  ports:
    {{- toYaml $np.dns.ports | nindent 4 }}
- to:
    {{- toYaml $np.nats.to | nindent 4 }}
  ports:
    {{- toYaml $np.nats.ports | nindent 4 }}
- to:
    {{- toYaml $np.store.to | nindent 4 }}
  ports:
    {{- toYaml $np.store.ports | nindent 4 }}
- to:
    {{- toYaml $np.redis.to | nindent 4 }}
  ports:
    {{- toYaml $np.redis.ports | nindent 4 }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}
