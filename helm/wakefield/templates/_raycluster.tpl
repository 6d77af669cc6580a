{{/*
The Ray cluster's spec, shared by the standing RayCluster and the cluster
each RayJob brings up. Ray's token authentication is always on: KubeRay reads
the token from the Secret named in authOptions (for its own calls to the
dashboard and the submitter's), and every Ray container gets it as
RAY_AUTH_TOKEN so that the nodes and the job submitter share one token.
*/}}
{{- define "wakefield.rayClusterSpec" -}}
{{- $v := .Values -}}
rayVersion: {{ $v.ray.version | quote }}
authOptions:
  mode: token
  secretName: {{ include "wakefield.rayAuthSecret" . }}
{{- if $v.ray.autoscaling.enabled }}
enableInTreeAutoscaling: true
autoscalerOptions:
  upscalingMode: {{ $v.ray.autoscaling.upscalingMode }}
  idleTimeoutSeconds: {{ $v.ray.autoscaling.idleTimeoutSeconds }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- with $v.ray.autoscaling.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- else }}
enableInTreeAutoscaling: false
{{- end }}
headGroupSpec:
  # ClusterIP only: the dashboard and job API (8265) are reached through
  # kubectl port-forward, or an Ingress with authentication (dashboard-ingress.yaml).
  serviceType: ClusterIP
  rayStartParams:
    {{- toYaml (default dict $v.ray.head.rayStartParams) | nindent 4 }}
  template:
    {{- include "wakefield.podTemplate" (dict "root" . "group" $v.ray.head "node" "head" "gpus" 0) | nindent 4 }}
workerGroupSpecs:
{{- range $name, $group := dict "cpu" $v.ray.workers.cpu "gpu" $v.ray.workers.gpu }}
{{- if $group.enabled }}
  - groupName: {{ $name }}
    replicas: {{ $group.minReplicas }}
    minReplicas: {{ $group.minReplicas }}
    maxReplicas: {{ $group.maxReplicas }}
    rayStartParams:
      {{- toYaml (default dict $group.rayStartParams) | nindent 6 }}
    template:
      {{- include "wakefield.podTemplate" (dict "root" $ "group" $group "node" "worker" "gpus" (ternary $group.gpus 0 (eq $name "gpu"))) | nindent 6 }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
One Ray pod template: head or worker. Parameters: root (the chart context),
group (the values of the head or the worker group), node (head or worker),
gpus (nvidia.com/gpu per pod).
*/}}
{{- define "wakefield.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $group := .group -}}
metadata:
  labels:
    {{- include "wakefield.labels" $root | nindent 4 }}
    app.kubernetes.io/component: ray-{{ .node }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $annotations := deepCopy (default dict $v.podAnnotations) }}
  {{- if $v.workflow.yaml }}
  {{- $_ := set $annotations "wakefield.io/workflow-sha256" (sha256sum $v.workflow.yaml) }}
  {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "wakefield.serviceAccountName" $root }}
  # Only the autoscaler (beside the head) calls the Kubernetes API; KubeRay
  # binds this ServiceAccount to the Role it makes for it.
  automountServiceAccountToken: {{ and (eq .node "head") $v.ray.autoscaling.enabled }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
    {{- end }}
  {{- end }}
  {{- with $v.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-{{ .node }}
      image: {{ include "wakefield.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      {{- if eq .node "head" }}
      ports:
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
      {{- end }}
      env:
        {{- include "wakefield.env" $root | trim | nindent 8 }}
      resources:
        {{- $resources := deepCopy (default dict $group.resources) }}
        {{- if gt (int .gpus) 0 }}
        {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $resources.limits)) }}
        {{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $resources.requests)) }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      {{- with $v.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        {{- include "wakefield.volumeMounts" $root | trim | nindent 8 }}
  volumes:
    {{- include "wakefield.volumes" $root | trim | nindent 4 }}
    - name: dshm
      emptyDir:
        medium: Memory
        {{- with $group.sharedMemory }}
        sizeLimit: {{ . }}
        {{- end }}
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
The environment of every Ray container: Ray's token, then wakefield's Kafka
client settings (WAKEFIELD_KAFKA_*, from Secrets only), then the datastore's
object-storage credentials, then extraEnv.
*/}}
{{- define "wakefield.env" -}}
{{- $v := .Values -}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "wakefield.rayAuthSecret" . }}
      key: auth_token
{{- include "wakefield.kafkaEnv" . }}
{{- if eq $v.datastore.type "s3" }}
{{- $s3 := $v.datastore.s3 }}
{{- with $s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $s3.secretAccessKeyKey }}
{{- end }}
{{- with $s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "wakefield.kafkaEnv" -}}
{{- $v := .Values -}}
{{- $proto := include "wakefield.kafkaProtocol" . }}
{{- if eq $v.kafka.mode "strimzi" }}
- name: WAKEFIELD_KAFKA_SECURITY_PROTOCOL
  value: {{ $proto }}
{{- if hasPrefix "SASL_" $proto }}
- name: WAKEFIELD_KAFKA_SASL_MECHANISM
  value: SCRAM-SHA-512
- name: WAKEFIELD_KAFKA_SASL_USERNAME
  value: {{ include "wakefield.kafkaUser" . }}
- name: WAKEFIELD_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "wakefield.kafkaUser" . }}
      key: password
{{- end }}
{{- if hasSuffix "SSL" $proto }}
- name: WAKEFIELD_KAFKA_SSL_CAFILE
  value: /etc/wakefield/kafka/ca.crt
{{- end }}
{{- else }}
{{- $ext := $v.kafka.external }}
{{- $sasl := $ext.sasl }}
{{- with $ext.configFile.existingSecret }}
{{- /* The file holds the protocol and credentials (NAME=value lines). */}}
- name: WAKEFIELD_KAFKA_CONFIG_FILE
  value: /etc/wakefield/kafka/{{ $ext.configFile.key }}
{{- else }}
- name: WAKEFIELD_KAFKA_SECURITY_PROTOCOL
  value: {{ $proto }}
{{- end }}
{{- if hasPrefix "SASL_" $proto }}
{{- $secret := default (include "wakefield.kafkaTestSecret" .) $sasl.existingSecret }}
- name: WAKEFIELD_KAFKA_SASL_MECHANISM
  value: {{ $sasl.mechanism }}
- name: WAKEFIELD_KAFKA_SASL_USERNAME
{{- if $sasl.usernameKey }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $sasl.usernameKey }}
{{- else if $sasl.existingSecret }}
  value: {{ $sasl.username | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: username
{{- end }}
- name: WAKEFIELD_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ ternary $sasl.passwordKey "password" (not (empty $sasl.existingSecret)) }}
{{- end }}
{{- if $ext.tls.existingSecret }}
- name: WAKEFIELD_KAFKA_SSL_CAFILE
  value: /etc/wakefield/kafka/ca.crt
{{- if $ext.tls.certKey }}
- name: WAKEFIELD_KAFKA_SSL_CERTFILE
  value: /etc/wakefield/kafka/client.crt
- name: WAKEFIELD_KAFKA_SSL_KEYFILE
  value: /etc/wakefield/kafka/client.key
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
/etc/wakefield is one projected volume: the workflow and the Kafka client's
files, so that nothing is mounted inside anything else and a changed
ConfigMap or Secret reaches the pods (no subPath).
*/}}
{{- define "wakefield.configSources" -}}
{{- $v := .Values -}}
{{- if include "wakefield.hasWorkflow" . }}
- configMap:
    name: {{ include "wakefield.workflowConfigMap" . }}
    items:
      - key: workflow.yaml
        path: workflow.yaml
{{- end }}
{{- if eq $v.kafka.mode "strimzi" }}
{{- if $v.kafka.strimzi.listener.tls }}
- secret:
    name: {{ include "wakefield.kafkaCluster" . }}-cluster-ca-cert
    items:
      - key: ca.crt
        path: kafka/ca.crt
{{- end }}
{{- else }}
{{- $tls := $v.kafka.external.tls }}
{{- if $tls.existingSecret }}
- secret:
    name: {{ $tls.existingSecret }}
    items:
      - key: {{ $tls.caKey }}
        path: kafka/ca.crt
      {{- if $tls.certKey }}
      - key: {{ $tls.certKey }}
        path: kafka/client.crt
      - key: {{ $tls.keyKey }}
        path: kafka/client.key
      {{- end }}
{{- end }}
{{- with $v.kafka.external.configFile.existingSecret }}
- secret:
    name: {{ . }}
    items:
      - key: {{ $v.kafka.external.configFile.key }}
        path: kafka/{{ $v.kafka.external.configFile.key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "wakefield.volumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
{{- if include "wakefield.configSources" . }}
- name: wakefield-config
  mountPath: /etc/wakefield
  readOnly: true
{{- end }}
{{- if eq .Values.datastore.type "pvc" }}
- name: datastore
  mountPath: {{ .Values.datastore.pvc.mountPath }}
{{- end }}
{{- end -}}

{{- define "wakefield.volumes" -}}
{{- with include "wakefield.configSources" . }}
- name: wakefield-config
  projected:
    # Readable by the pod's group (fsGroup) only: it may hold a private key.
    defaultMode: 0440
    sources:
      {{- . | trim | nindent 6 }}
{{- end }}
{{- if eq .Values.datastore.type "pvc" }}
- name: datastore
  persistentVolumeClaim:
    claimName: {{ include "wakefield.datastoreClaim" . }}
{{- end }}
{{- end -}}
