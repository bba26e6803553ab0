// Package deploy checks the deployment files with the real parsers, since
// no container engine or cluster runs here: the compose file with the
// Compose specification's library, the Kubernetes overlays with kustomize
// and the k8s.io/api types (strictly), against what the services read.
package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/spillway/spillway/pkg/config"
)

// monitoringPorts are the ports each service serves /metrics, /healthz and
// /readyz on, by default.
var monitoringPorts = map[string]string{"ingest": "28080", "forwarder": "28081", "resender": "28082"}

// envOf turns a container's environment into KEY=VALUE lines.
func envOf(m map[string]*string) []string {
	var out []string
	for k, v := range m {
		if v != nil {
			out = append(out, k+"="+*v)
		}
	}
	slices.Sort(out)
	return out
}

// checkConfig loads the services' configuration file with environment
// variables as a service would: it must load without error, and every
// SPILLWAY_ variable must be a key (no warnings).
func checkConfig(t *testing.T, file string, env []string) *config.Config {
	t.Helper()
	c, err := config.Load(file, env)
	require.NoError(t, err, "the configuration %s with %v", file, env)
	assert.Empty(t, c.Warnings, "every SPILLWAY_ variable is a configuration key")
	return c
}

func TestCompose(t *testing.T) {
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yaml"}, cli.WithWorkingDirectory(".."), cli.WithOsEnv)
	require.NoError(t, err)
	p, err := opts.LoadProject(context.Background())
	require.NoError(t, err)

	for _, name := range []string{"kafka", "nats", "ingest", "forwarder", "resender", "jaeger", "prometheus", "grafana"} {
		_, err := p.GetService(name)
		require.NoError(t, err, "service %s", name)
	}
	for _, name := range []string{"ingest", "forwarder", "resender"} {
		s, _ := p.GetService(name)
		// The configuration file the service mounts, with its environment.
		var file string
		for _, v := range s.Volumes {
			if v.Target == "/etc/spillway/config.yaml" {
				file = v.Source
			}
		}
		require.NotEmpty(t, file, "%s mounts the configuration", name)
		require.True(t, slices.Contains(s.Entrypoint, "/etc/spillway/config.yaml"), "%s reads the mounted configuration: %v", name, s.Entrypoint)
		c := checkConfig(t, file, envOf(s.Environment))
		assert.Equal(t, []string{"kafka:9092"}, c.Kafka.Brokers)
		assert.Equal(t, []string{"nats://nats:4222"}, c.Producer.WAL.NATS.URLs, "the ingest uses the external JetStream")

		listen := map[string]string{"ingest": c.Server.Monitoring.Listen, "forwarder": c.Forward.MonitoringListen, "resender": c.Resend.MonitoringListen}[name]
		assert.Equal(t, ":"+monitoringPorts[name], listen, "%s monitoring port", name)
		require.NotNil(t, s.HealthCheck, "%s has a health check", name)
		assert.Contains(t, strings.Join(s.HealthCheck.Test, " "), "http://127.0.0.1:"+monitoringPorts[name]+"/readyz")
		published := map[string]bool{}
		for _, port := range s.Ports {
			published[fmt.Sprint(port.Target)] = true
		}
		assert.True(t, published[monitoringPorts[name]], "%s publishes its monitoring port", name)
		if name == "ingest" {
			assert.True(t, published["18080"] && published["18282"], "the ingest publishes HTTP and gRPC")
			assert.True(t, published["19092"], "the ingest publishes its Kafka listener")
			assert.Equal(t, ":18080", c.Server.HTTP.Listen)
			assert.Equal(t, ":18282", c.Server.GRPC.Listen)
			assert.Equal(t, ":19092", c.Server.Kafka.Listen)
			assert.Equal(t, "localhost:19092", c.Server.Kafka.Advertised, "Metadata names the published port")
		}
		for dep, d := range s.DependsOn {
			if dep == "kafka" || dep == "nats" || dep == "ingest" {
				assert.Equal(t, types.ServiceConditionHealthy, d.Condition, "%s waits for %s to be healthy", name, dep)
			}
		}
	}
	for _, name := range []string{"kafka", "nats"} {
		s, _ := p.GetService(name)
		assert.NotNil(t, s.HealthCheck, "%s has a health check", name)
	}

	// Prometheus scrapes each service's monitoring port.
	prom, err := os.ReadFile("prometheus/prometheus.yml")
	require.NoError(t, err)
	for name, port := range monitoringPorts {
		assert.Contains(t, string(prom), fmt.Sprintf("%q", name+":"+port))
	}
}

// object is one rendered Kubernetes object.
type object struct {
	Kind string
	Name string
	YAML []byte
}

func build(t *testing.T, overlay string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("k8s", "overlays", overlay))
	require.NoError(t, err)
	var out []object
	for _, r := range res.Resources() {
		y, err := r.AsYAML()
		require.NoError(t, err)
		out = append(out, object{Kind: r.GetKind(), Name: r.GetName(), YAML: y})
	}
	return out
}

func TestKustomizeOverlays(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		t.Run(overlay, func(t *testing.T) {
			objects := build(t, overlay)
			deployments := map[string]*appsv1.Deployment{}
			services := map[string]*corev1.Service{}
			var policies []*networkingv1.NetworkPolicy
			var scrape map[string]string // the ServiceMonitor's selector
			var configYAML string
			kinds := map[string]int{}
			for _, o := range objects {
				kinds[o.Kind]++
				var target any
				switch o.Kind {
				case "Deployment":
					d := &appsv1.Deployment{}
					deployments[o.Name] = d
					target = d
				case "StatefulSet":
					target = &appsv1.StatefulSet{}
				case "Service":
					svc := &corev1.Service{}
					services[o.Name] = svc
					target = svc
				case "NetworkPolicy":
					np := &networkingv1.NetworkPolicy{}
					policies = append(policies, np)
					target = np
				case "ConfigMap":
					cm := &corev1.ConfigMap{}
					require.NoError(t, yaml.UnmarshalStrict(o.YAML, cm))
					if strings.HasPrefix(o.Name, "spillway-config") {
						configYAML = cm.Data["config.yaml"]
					}
					continue
				case "PodDisruptionBudget":
					target = &policyv1.PodDisruptionBudget{}
				case "HorizontalPodAutoscaler":
					target = &autoscalingv2.HorizontalPodAutoscaler{}
				case "ServiceMonitor":
					// A Prometheus Operator type, not in k8s.io/api: check the
					// fields that matter.
					var sm struct {
						Spec struct {
							Selector  struct{ MatchLabels map[string]string } `json:"selector"`
							Endpoints []struct{ Port, Path string }           `json:"endpoints"`
						} `json:"spec"`
					}
					require.NoError(t, yaml.Unmarshal(o.YAML, &sm))
					scrape = sm.Spec.Selector.MatchLabels
					require.Len(t, sm.Spec.Endpoints, 1)
					assert.Equal(t, "monitoring", sm.Spec.Endpoints[0].Port)
					assert.Equal(t, "/metrics", sm.Spec.Endpoints[0].Path)
					continue
				default:
					t.Fatalf("unexpected kind %s (%s)", o.Kind, o.Name)
				}
				require.NoError(t, yaml.UnmarshalStrict(o.YAML, target), "%s %s decodes strictly", o.Kind, o.Name)
			}
			checkMonitoringNotPublished(t, services, scrape)
			checkNATSPolicy(t, policies)
			for _, k := range []string{"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy"} {
				assert.Positive(t, kinds[k], "the %s overlay has a %s", overlay, k)
			}
			require.NotEmpty(t, configYAML, "the configuration is in a ConfigMap")
			file := filepath.Join(t.TempDir(), "config.yaml")
			require.NoError(t, os.WriteFile(file, []byte(configYAML), 0o600))

			ingest := deployments["spillway-ingest"]
			require.NotNil(t, ingest)
			assert.GreaterOrEqual(t, *ingest.Spec.Replicas, int32(2), "at least 2 ingest replicas")
			assert.NotEmpty(t, ingest.Spec.Template.Spec.TopologySpreadConstraints)
			for name, port := range monitoringPorts {
				d := deployments["spillway-"+name]
				require.NotNil(t, d, name)
				spec := d.Spec.Template.Spec
				require.NotNil(t, spec.SecurityContext)
				assert.True(t, *spec.SecurityContext.RunAsNonRoot, "%s runs as non-root", name)
				c := spec.Containers[0]
				assert.True(t, *c.SecurityContext.ReadOnlyRootFilesystem, "%s has a read-only root", name)
				assert.False(t, *c.SecurityContext.AllowPrivilegeEscalation, name)
				assert.NotEmpty(t, c.Resources.Requests, name)

				// The probes name the real monitoring paths and port.
				ports := map[string]int32{}
				for _, p := range c.Ports {
					ports[p.Name] = p.ContainerPort
				}
				for probe, path := range map[*corev1.Probe]string{c.ReadinessProbe: "/readyz", c.LivenessProbe: "/healthz"} {
					require.NotNil(t, probe, name)
					assert.Equal(t, path, probe.HTTPGet.Path, name)
					assert.Equal(t, port, fmt.Sprint(ports[probe.HTTPGet.Port.StrVal]), "%s probes its monitoring port", name)
				}

				// The container's configuration and environment load as the
				// service would read them.
				env := []string{}
				for _, e := range c.Env {
					if e.ValueFrom == nil {
						env = append(env, e.Name+"="+e.Value)
					}
				}
				cfg := checkConfig(t, file, env)
				listen := map[string]string{"ingest": cfg.Server.Monitoring.Listen, "forwarder": cfg.Forward.MonitoringListen, "resender": cfg.Resend.MonitoringListen}[name]
				assert.Equal(t, ":"+port, listen, "%s listens where its probes look", name)
				assert.NotEmpty(t, cfg.Producer.WAL.NATS.URLs, "%s uses the NATS cluster", name)
				if overlay == "prod" {
					assert.Equal(t, 3, cfg.Producer.WAL.Replicas, "%s keeps the buffer on 3 nodes", name)
				}
				if name == "ingest" {
					checkSecurity(t, overlay, cfg, spec)
					checkKafkaListenerPublished(t, services["spillway-ingest"], ports, cfg.Server.Kafka.Listen)
				}
			}
		})
	}
}

// checkKafkaListenerPublished: the ingest's API Service publishes the
// Kafka listener's port, forwarding to the container port it listens on.
func checkKafkaListenerPublished(t *testing.T, api *corev1.Service, containerPorts map[string]int32, listen string) {
	t.Helper()
	require.NotNil(t, api, "the ingest's API Service")
	assert.Equal(t, ":19092", listen, "the ingest's Kafka listener")
	var found bool
	for _, p := range api.Spec.Ports {
		if p.Name != "kafka" {
			continue
		}
		found = true
		assert.Equal(t, int32(19092), p.Port, "the Service's Kafka port")
		assert.Equal(t, ":"+fmt.Sprint(containerPorts[p.TargetPort.String()]), listen, "the Service forwards to the port the Kafka listener is on")
	}
	assert.True(t, found, "the ingest's API Service publishes a port named kafka")
}

// checkMonitoringNotPublished: the Service clients reach (the ingest's
// API) publishes no monitoring port, which serves metrics and, when
// enabled, pprof; the ServiceMonitor scrapes Services that publish only the
// monitoring port, one per service.
func checkMonitoringNotPublished(t *testing.T, services map[string]*corev1.Service, scrape map[string]string) {
	t.Helper()
	api := services["spillway-ingest"]
	require.NotNil(t, api, "the ingest's API Service")
	for _, p := range api.Spec.Ports {
		assert.NotEqual(t, "monitoring", p.Name, "the API Service publishes the monitoring port")
		for _, port := range monitoringPorts {
			assert.NotEqual(t, port, fmt.Sprint(p.Port), "the API Service publishes the monitoring port %d", p.Port)
			assert.NotEqual(t, port, p.TargetPort.String(), "the API Service forwards to the monitoring port")
		}
	}
	require.NotEmpty(t, scrape)
	scraped := 0
	for name, svc := range services {
		selected := true
		for k, v := range scrape {
			selected = selected && svc.Labels[k] == v
		}
		if !selected {
			continue
		}
		scraped++
		for _, p := range svc.Spec.Ports {
			assert.Equal(t, "monitoring", p.Name, "the ServiceMonitor selects %s, which publishes %s", name, p.Name)
		}
	}
	assert.Equal(t, len(monitoringPorts), scraped, "the ServiceMonitor scrapes one metrics Service per service")
}

// checkNATSPolicy: a NetworkPolicy lets only Spillway's pods reach NATS's
// client port, only NATS pods its route port, and no one else anything
// (the monitoring port at most from the monitoring namespace).
func checkNATSPolicy(t *testing.T, policies []*networkingv1.NetworkPolicy) {
	t.Helper()
	var np *networkingv1.NetworkPolicy
	for _, p := range policies {
		if p.Spec.PodSelector.MatchLabels["app.kubernetes.io/name"] == "spillway-nats" {
			np = p
		}
	}
	require.NotNil(t, np, "a NetworkPolicy selects the NATS pods")
	assert.Contains(t, np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
	allowed := map[int32][]string{} // port: who may reach it
	for _, rule := range np.Spec.Ingress {
		require.NotEmpty(t, rule.From, "a rule without from lets anyone in")
		require.NotEmpty(t, rule.Ports, "a rule without ports opens every port")
		for _, peer := range rule.From {
			assert.Nil(t, peer.IPBlock, "no address range is let in")
			var who string
			switch {
			case peer.PodSelector != nil && peer.NamespaceSelector == nil:
				who = "pods:" + peer.PodSelector.MatchLabels["app.kubernetes.io/name"]
			case peer.NamespaceSelector != nil && peer.PodSelector == nil:
				who = "namespace:" + peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
			default:
				t.Errorf("a peer of another form: %+v", peer)
			}
			for _, p := range rule.Ports {
				allowed[p.Port.IntVal] = append(allowed[p.Port.IntVal], who)
			}
		}
	}
	assert.ElementsMatch(t, []string{"pods:spillway", "pods:spillway-nats"}, allowed[4222], "who reaches NATS's clients port")
	assert.ElementsMatch(t, []string{"pods:spillway-nats"}, allowed[6222], "who reaches NATS's route port")
	for _, who := range allowed[8222] {
		assert.Equal(t, "namespace:monitoring", who, "who reaches NATS's monitoring port")
	}
	for port := range allowed {
		assert.Contains(t, []int32{4222, 6222, 8222}, port)
	}
}

// checkSecurity: security is off in the dev overlay (as in make run) and
// on in prod: TLS with the files of a mounted Secret, client certificates
// verified, credentials required.
func checkSecurity(t *testing.T, overlay string, cfg *config.Config, spec corev1.PodSpec) {
	t.Helper()
	if overlay != "prod" {
		assert.False(t, cfg.Server.TLS.Enabled(), "no TLS in %s", overlay)
		assert.False(t, cfg.Security.RequireCredentials, "no credentials required in %s", overlay)
		return
	}
	assert.True(t, cfg.Security.RequireCredentials, "prod requires credentials")
	require.True(t, cfg.Server.TLS.Enabled(), "prod listeners speak TLS")
	assert.NotEqual(t, config.ClientAuthNone, cfg.Server.TLS.ClientAuth, "prod verifies client certificates")
	secrets := map[string]string{}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	for _, file := range []string{cfg.Server.TLS.CertFile, cfg.Server.TLS.KeyFile, cfg.Server.TLS.ClientCAFile} {
		mounted := false
		for _, m := range spec.Containers[0].VolumeMounts {
			if secrets[m.Name] != "" && strings.HasPrefix(file, m.MountPath+"/") {
				mounted = true
			}
		}
		assert.True(t, mounted, "%s is in a mounted Secret", file)
	}
}

// TestAlertRules: the Prometheus alert rules parse strictly, the
// configuration compose mounts loads them, and every metric an alert reads
// is one the services export (documented in docs/operations.md, which a
// doc-sync test keeps in step with what the services register).
func TestAlertRules(t *testing.T) {
	raw, err := os.ReadFile("prometheus/alerts.yml")
	require.NoError(t, err)
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	require.NoError(t, yaml.UnmarshalStrict(raw, &rules))
	require.NotEmpty(t, rules.Groups)

	prom, err := os.ReadFile("prometheus/prometheus.yml")
	require.NoError(t, err)
	var promConfig struct {
		RuleFiles []string `json:"rule_files"`
	}
	require.NoError(t, yaml.Unmarshal(prom, &promConfig))
	assert.Contains(t, promConfig.RuleFiles, "alerts.yml", "prometheus.yml loads the rules")
	compose, err := os.ReadFile("../docker-compose.yaml")
	require.NoError(t, err)
	assert.Contains(t, string(compose), "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml", "compose mounts the rules beside prometheus.yml")

	ops, err := os.ReadFile("../docs/operations.md")
	require.NoError(t, err)
	metric := regexp.MustCompile(`\bspillway_[a-z_]+`)
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			assert.NotEmpty(t, r.Alert, "group %s: every rule is an alert", g.Name)
			assert.NotEmpty(t, r.For, "%s waits before firing", r.Alert)
			assert.NotEmpty(t, r.Annotations["summary"], "%s has a summary", r.Alert)
			names := metric.FindAllString(r.Expr, -1)
			assert.NotEmpty(t, names, "%s reads a Spillway metric: %s", r.Alert, r.Expr)
			for _, name := range names {
				assert.True(t, strings.Contains(string(ops), "| `"+name+"` |"), "%s reads %s, which no service exports (docs/operations.md)", r.Alert, name)
			}
		}
	}
	assert.Positive(t, n)
}
