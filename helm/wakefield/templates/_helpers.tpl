{{/*
Names. The RayCluster is named after the release's full name; KubeRay
derives its Services from it and allows DNS-1035 labels of at most 53
characters, and the RayJob adds "-r<revision>", so the full name is kept to
40 characters and refused, not cut, when longer.
*/}}
{{- define "wakefield.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "wakefield.fullname" -}}
{{- $name := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $name = .Values.fullnameOverride -}}
{{- else -}}
{{- $base := default .Chart.Name .Values.nameOverride -}}
{{- if contains $base .Release.Name -}}
{{- $name = .Release.Name -}}
{{- else -}}
{{- $name = printf "%s-%s" .Release.Name $base -}}
{{- end -}}
{{- end -}}
{{- if gt (len $name) 40 -}}
{{- fail (printf "the resource name %q has %d characters; KubeRay names its Services after the RayCluster and allows at most 40 here. Set fullnameOverride to a shorter DNS-1035 label, e.g. --set fullnameOverride=wakefield" $name (len $name)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "the resource name %q is not a DNS-1035 label (lower-case letters, digits and '-', a letter first), which KubeRay requires of a RayCluster. Set fullnameOverride, e.g. --set fullnameOverride=wakefield" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "wakefield.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wakefield.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wakefield.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wakefield.labels" -}}
helm.sh/chart: {{ include "wakefield.chart" . }}
{{ include "wakefield.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wakefield
{{- end -}}

{{- define "wakefield.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wakefield.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wakefield.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret with Ray's authentication token (key auth_token). */}}
{{- define "wakefield.rayAuthSecret" -}}
{{- default (printf "%s-ray-auth" (include "wakefield.fullname" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{/* Whether a workflow is given, and the ConfigMap that holds it. */}}
{{- define "wakefield.hasWorkflow" -}}
{{- if or .Values.workflow.yaml .Values.workflow.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{- define "wakefield.workflowConfigMap" -}}
{{- default (printf "%s-workflow" (include "wakefield.fullname" .)) .Values.workflow.existingConfigMap -}}
{{- end -}}

{{- define "wakefield.runId" -}}
{{- default (printf "%s-%d" .Release.Name (int .Release.Revision)) .Values.run.id -}}
{{- end -}}

{{/* Strimzi names: the Kafka cluster, its bootstrap Service and its user. */}}
{{- define "wakefield.kafkaCluster" -}}
{{- printf "%s-kafka" (include "wakefield.fullname" .) -}}
{{- end -}}

{{- define "wakefield.kafkaUser" -}}
{{- printf "%s-wakefield" (include "wakefield.kafkaCluster" .) -}}
{{- end -}}

{{/* The bootstrap brokers wakefield connects to. */}}
{{- define "wakefield.kafkaBootstrap" -}}
{{- if eq .Values.kafka.mode "strimzi" -}}
{{- printf "%s-kafka-bootstrap:%d" (include "wakefield.kafkaCluster" .) (int .Values.kafka.strimzi.listener.port) -}}
{{- else -}}
{{- .Values.kafka.external.bootstrap -}}
{{- end -}}
{{- end -}}

{{/* The security protocol wakefield's Kafka clients use. */}}
{{- define "wakefield.kafkaProtocol" -}}
{{- if eq .Values.kafka.mode "strimzi" -}}
{{- $l := .Values.kafka.strimzi.listener -}}
{{- $sasl := eq $l.authentication "scram-sha-512" -}}
{{- if and $l.tls $sasl -}}SASL_SSL
{{- else if $l.tls -}}SSL
{{- else if $sasl -}}SASL_PLAINTEXT
{{- else -}}PLAINTEXT
{{- end -}}
{{- else -}}
{{- .Values.kafka.external.securityProtocol -}}
{{- end -}}
{{- end -}}

{{- define "wakefield.kafkaTestSecret" -}}
{{- printf "%s-kafka-test-credentials" (include "wakefield.fullname" .) -}}
{{- end -}}

{{- define "wakefield.datastoreUri" -}}
{{- if eq .Values.datastore.type "s3" -}}
{{- .Values.datastore.s3.uri -}}
{{- else -}}
{{- .Values.datastore.pvc.mountPath -}}
{{- end -}}
{{- end -}}

{{- define "wakefield.datastoreClaim" -}}
{{- default (printf "%s-datastore" (include "wakefield.fullname" .)) .Values.datastore.pvc.existingClaim -}}
{{- end -}}
