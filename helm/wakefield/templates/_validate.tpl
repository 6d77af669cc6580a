{{/*
Checks that values.schema.json cannot express: combinations of values. Each
failure says what came in, what is allowed and how to fix it. Included once,
from raycluster.yaml and rayjob.yaml alike (whichever renders).
*/}}
{{- define "wakefield.validate" -}}
{{- $v := .Values -}}

{{- /* The workflow: one source. */ -}}
{{- if and $v.workflow.yaml $v.workflow.existingConfigMap -}}
{{- fail "workflow.yaml and workflow.existingConfigMap are both set; the workflow comes from one of them. Unset one (e.g. --set workflow.existingConfigMap=)" -}}
{{- end -}}
{{- range $v.run.extraArgs -}}
{{- if regexMatch "^(--(bus|datastore|run-id|resume|ray-address|output)|-o)(=|$)" . -}}
{{- fail (printf "run.extraArgs has %q, which the chart already sets from kafka.*, datastore.*, run.id, run.resume and --output json (Ray tells the run its cluster). Remove it from run.extraArgs and set the value it stands for instead" .) -}}
{{- end -}}
{{- end -}}

{{- /* Ray's worker groups. */ -}}
{{- $cpu := $v.ray.workers.cpu -}}
{{- $gpu := $v.ray.workers.gpu -}}
{{- range $name, $g := dict "ray.workers.cpu" $cpu "ray.workers.gpu" $gpu -}}
{{- if and $g.enabled (gt (int $g.minReplicas) (int $g.maxReplicas)) -}}
{{- fail (printf "%s.minReplicas is %d, more than %s.maxReplicas (%d). The autoscaler keeps the group between the two: make minReplicas <= maxReplicas" $name (int $g.minReplicas) $name (int $g.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if and (not $cpu.enabled) (not $gpu.enabled) (eq (toString (index $v.ray.head.rayStartParams "num-cpus")) "0") -}}
{{- fail "both worker groups are off (ray.workers.cpu.enabled and ray.workers.gpu.enabled are false) and the head takes no work (ray.head.rayStartParams.num-cpus is \"0\"), so no service could ever start. Enable a worker group, or let the head work with --set-string ray.head.rayStartParams.num-cpus=2" -}}
{{- end -}}

{{- /* The dashboard: never exposed without an authenticating proxy. */ -}}
{{- $ing := $v.ray.dashboard.ingress -}}
{{- if $ing.enabled -}}
{{- if not (or $ing.auth.url $ing.auth.basicSecret $ing.auth.annotations) -}}
{{- fail "ray.dashboard.ingress.enabled is true but ray.dashboard.ingress.auth sets no authentication. The Ray dashboard and job API run any code they are sent, so the chart exposes them only behind an authenticating proxy: set ray.dashboard.ingress.auth.url (an oauth2-proxy for ingress-nginx), ray.dashboard.ingress.auth.basicSecret (an htpasswd Secret), or ray.dashboard.ingress.auth.annotations (another controller's authentication); or keep the dashboard inside the cluster and use kubectl port-forward" -}}
{{- end -}}
{{- if not $ing.host -}}
{{- fail "ray.dashboard.ingress.enabled is true but ray.dashboard.ingress.host is empty. Set the host name the dashboard is served at, e.g. --set ray.dashboard.ingress.host=ray.example.org" -}}
{{- end -}}
{{- if and $ing.auth.signin (not $ing.auth.url) -}}
{{- fail "ray.dashboard.ingress.auth.signin is set without ray.dashboard.ingress.auth.url. Sign-in redirects only work with external authentication: set auth.url too" -}}
{{- end -}}
{{- end -}}

{{- /* Kafka. */ -}}
{{- $ext := $v.kafka.external -}}
{{- if eq $v.kafka.mode "external" -}}
{{- if and (include "wakefield.hasWorkflow" .) (not $ext.bootstrap) -}}
{{- fail "kafka.mode is external but kafka.external.bootstrap is empty. Set the brokers as host:port joined by commas, e.g. --set kafka.external.bootstrap=kafka-0.lab.org:9093, or use --set kafka.mode=strimzi to run Kafka with the Strimzi operator" -}}
{{- end -}}
{{- $proto := $ext.securityProtocol -}}
{{- if $ext.configFile.existingSecret -}}
{{- if ne $proto "PLAINTEXT" -}}
{{- fail (printf "kafka.external.securityProtocol is %s and kafka.external.configFile is set: the file's WAKEFIELD_KAFKA_SECURITY_PROTOCOL line decides. Leave securityProtocol at PLAINTEXT (its default) and set the protocol in the file" $proto) -}}
{{- end -}}
{{- if or $ext.sasl.existingSecret $ext.sasl.username $ext.sasl.usernameKey $ext.sasl.testCredentials.username $ext.sasl.testCredentials.password -}}
{{- fail "kafka.external.sasl and kafka.external.configFile are both set. Put the SASL settings (WAKEFIELD_KAFKA_SASL_*) in the file, or drop configFile and use kafka.external.sasl" -}}
{{- end -}}
{{- end -}}
{{- $sasl := $ext.sasl -}}
{{- $test := $sasl.testCredentials -}}
{{- if hasPrefix "SASL_" $proto -}}
{{- if and $sasl.existingSecret (or $test.username $test.password) -}}
{{- fail "kafka.external.sasl.existingSecret and kafka.external.sasl.testCredentials are both set. Use existingSecret, and leave testCredentials (for tests only) empty" -}}
{{- end -}}
{{- if not (or $sasl.existingSecret $test.password) -}}
{{- fail (printf "kafka.external.securityProtocol is %s but no password is given. Set kafka.external.sasl.existingSecret to a Secret holding it (key kafka.external.sasl.passwordKey, now %q)" $proto $sasl.passwordKey) -}}
{{- end -}}
{{- if not (or $sasl.username $sasl.usernameKey $test.username) -}}
{{- fail (printf "kafka.external.securityProtocol is %s but no user name is given. Set kafka.external.sasl.username, or kafka.external.sasl.usernameKey to read it from the Secret" $proto) -}}
{{- end -}}
{{- if and $sasl.usernameKey (not $sasl.existingSecret) -}}
{{- fail "kafka.external.sasl.usernameKey is set but kafka.external.sasl.existingSecret is empty. The key names an entry of that Secret: set existingSecret, or give the user name as kafka.external.sasl.username" -}}
{{- end -}}
{{- else if or $sasl.existingSecret $sasl.username $sasl.usernameKey $test.username $test.password -}}
{{- fail (printf "kafka.external.sasl is set but kafka.external.securityProtocol is %s, which sends no credentials. Use SASL_SSL (or SASL_PLAINTEXT on a trusted network), or remove the SASL settings" $proto) -}}
{{- end -}}
{{- $tls := $ext.tls -}}
{{- if not (or (hasSuffix "SSL" $proto) $ext.configFile.existingSecret) -}}
{{- if or $tls.existingSecret $tls.certKey $tls.keyKey -}}
{{- fail (printf "kafka.external.tls is set but kafka.external.securityProtocol is %s, which does not use TLS. Use SSL or SASL_SSL, or remove the TLS settings" $proto) -}}
{{- end -}}
{{- end -}}
{{- if or (and $tls.certKey (not $tls.keyKey)) (and $tls.keyKey (not $tls.certKey)) -}}
{{- fail "mutual TLS needs both kafka.external.tls.certKey and kafka.external.tls.keyKey; only one is set. Set both, or neither" -}}
{{- end -}}
{{- if and (or $tls.certKey $tls.keyKey) (not $tls.existingSecret) -}}
{{- fail "kafka.external.tls.certKey/keyKey are set but kafka.external.tls.existingSecret is empty. Name the Secret that holds the client certificate and key" -}}
{{- end -}}
{{- else -}}
{{- if or $ext.bootstrap $ext.sasl.existingSecret $ext.sasl.testCredentials.password $ext.tls.existingSecret $ext.configFile.existingSecret -}}
{{- fail "kafka.mode is strimzi but kafka.external.* is set. With Strimzi the chart declares the Kafka cluster and wires its address, CA and credentials itself: remove the kafka.external settings, or use --set kafka.mode=external" -}}
{{- end -}}
{{- end -}}

{{- /* The datastore. */ -}}
{{- if eq $v.datastore.type "s3" -}}
{{- if not $v.datastore.s3.uri -}}
{{- fail "datastore.type is s3 but datastore.s3.uri is empty. Set the root of the datastore, e.g. --set datastore.s3.uri=s3://accelerator-ml/wakefield" -}}
{{- end -}}
{{- else if $v.datastore.s3.uri -}}
{{- fail (printf "datastore.s3.uri is %q but datastore.type is pvc, so it would be ignored. Use --set datastore.type=s3, or remove datastore.s3.uri" $v.datastore.s3.uri) -}}
{{- end -}}
{{- end -}}
