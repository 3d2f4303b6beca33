// Command goref is the benchmark's reference: the pod-registry check of toolforge-admission
// written in Go with the standard library only, the way a controller-runtime webhook does it.
//
// It serves HTTPS/1.1 with the same certificate, decodes the AdmissionReview with encoding/json
// into typed structs (the object as a raw message, then into a typed Pod or PipelineRun),
// normalises every image of containers, initContainers and ephemeralContainers (or the
// PipelineRun's APP_IMAGE and BUILDER_IMAGE params) like Docker does, checks it against the
// namespace's allowed prefixes on "/" boundaries, and replies with allowed or a 403 status.
// It writes no logs and no metrics.
package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
)

const maxBody = 3 << 20

type GroupVersionKind struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

type GroupVersionResource struct {
	Group    string `json:"group"`
	Version  string `json:"version"`
	Resource string `json:"resource"`
}

type UserInfo struct {
	Username string              `json:"username"`
	UID      string              `json:"uid"`
	Groups   []string            `json:"groups"`
	Extra    map[string][]string `json:"extra"`
}

type AdmissionRequest struct {
	UID             string                `json:"uid"`
	Kind            GroupVersionKind      `json:"kind"`
	Resource        GroupVersionResource  `json:"resource"`
	SubResource     string                `json:"subResource"`
	RequestKind     *GroupVersionKind     `json:"requestKind"`
	RequestResource *GroupVersionResource `json:"requestResource"`
	Name            string                `json:"name"`
	Namespace       string                `json:"namespace"`
	Operation       string                `json:"operation"`
	UserInfo        UserInfo              `json:"userInfo"`
	Object          json.RawMessage       `json:"object"`
	OldObject       json.RawMessage       `json:"oldObject"`
	DryRun          *bool                 `json:"dryRun"`
	Options         json.RawMessage       `json:"options"`
}

type AdmissionReview struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Request    *AdmissionRequest `json:"request"`
}

type Status struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type AdmissionResponse struct {
	UID     string  `json:"uid"`
	Allowed bool    `json:"allowed"`
	Status  *Status `json:"status,omitempty"`
}

type ReviewReply struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Response   AdmissionResponse `json:"response"`
}

type OwnerReference struct {
	APIVersion         string `json:"apiVersion"`
	Kind               string `json:"kind"`
	Name               string `json:"name"`
	UID                string `json:"uid"`
	Controller         *bool  `json:"controller"`
	BlockOwnerDeletion *bool  `json:"blockOwnerDeletion"`
}

type ManagedFieldsEntry struct {
	Manager    string          `json:"manager"`
	Operation  string          `json:"operation"`
	APIVersion string          `json:"apiVersion"`
	Time       string          `json:"time"`
	FieldsType string          `json:"fieldsType"`
	FieldsV1   json.RawMessage `json:"fieldsV1"`
}

type ObjectMeta struct {
	Name              string               `json:"name"`
	GenerateName      string               `json:"generateName"`
	Namespace         string               `json:"namespace"`
	UID               string               `json:"uid"`
	CreationTimestamp *string              `json:"creationTimestamp"`
	Generation        int64                `json:"generation"`
	Labels            map[string]string    `json:"labels"`
	Annotations       map[string]string    `json:"annotations"`
	OwnerReferences   []OwnerReference     `json:"ownerReferences"`
	Finalizers        []string             `json:"finalizers"`
	ManagedFields     []ManagedFieldsEntry `json:"managedFields"`
}

type EnvVar struct {
	Name      string          `json:"name"`
	Value     string          `json:"value"`
	ValueFrom json.RawMessage `json:"valueFrom"`
}

type ContainerPort struct {
	Name          string `json:"name"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

type VolumeMount struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
	SubPath   string `json:"subPath"`
	ReadOnly  bool   `json:"readOnly"`
}

type Container struct {
	Name                     string          `json:"name"`
	Image                    *string         `json:"image"`
	Command                  []string        `json:"command"`
	Args                     []string        `json:"args"`
	WorkingDir               string          `json:"workingDir"`
	Ports                    []ContainerPort `json:"ports"`
	Env                      []EnvVar        `json:"env"`
	Resources                json.RawMessage `json:"resources"`
	VolumeMounts             []VolumeMount   `json:"volumeMounts"`
	LivenessProbe            json.RawMessage `json:"livenessProbe"`
	ReadinessProbe           json.RawMessage `json:"readinessProbe"`
	StartupProbe             json.RawMessage `json:"startupProbe"`
	TerminationMessagePath   string          `json:"terminationMessagePath"`
	TerminationMessagePolicy string          `json:"terminationMessagePolicy"`
	ImagePullPolicy          string          `json:"imagePullPolicy"`
	SecurityContext          json.RawMessage `json:"securityContext"`
}

type Volume struct {
	Name      string          `json:"name"`
	EmptyDir  json.RawMessage `json:"emptyDir"`
	HostPath  json.RawMessage `json:"hostPath"`
	Secret    json.RawMessage `json:"secret"`
	ConfigMap json.RawMessage `json:"configMap"`
	Projected json.RawMessage `json:"projected"`
}

type PodSpec struct {
	InitContainers      []Container       `json:"initContainers"`
	Containers          []Container       `json:"containers"`
	EphemeralContainers []Container       `json:"ephemeralContainers"`
	Volumes             []Volume          `json:"volumes"`
	RestartPolicy       string            `json:"restartPolicy"`
	ServiceAccountName  string            `json:"serviceAccountName"`
	NodeSelector        map[string]string `json:"nodeSelector"`
	SecurityContext     json.RawMessage   `json:"securityContext"`
	Tolerations         json.RawMessage   `json:"tolerations"`
}

type Pod struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   ObjectMeta      `json:"metadata"`
	Spec       PodSpec         `json:"spec"`
	Status     json.RawMessage `json:"status"`
}

type Param struct {
	Name  string          `json:"name"`
	Value json.RawMessage `json:"value"`
}

type PipelineRunSpec struct {
	PipelineRef *struct {
		Name string `json:"name"`
	} `json:"pipelineRef"`
	Params          []Param         `json:"params"`
	Workspaces      json.RawMessage `json:"workspaces"`
	TaskRunTemplate json.RawMessage `json:"taskRunTemplate"`
	Timeouts        json.RawMessage `json:"timeouts"`
}

type PipelineRun struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   ObjectMeta      `json:"metadata"`
	Spec       PipelineRunSpec `json:"spec"`
}

// ---- images -------------------------------------------------------------------------------

type imageRef struct{ registry, path string }

var hubAliases = map[string]bool{"docker.io": true, "index.docker.io": true, "registry-1.docker.io": true}

func lowerAlnum(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') }

// validComponent checks [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*.
func validComponent(s string) bool {
	i, n := 0, len(s)
	for {
		start := i
		for i < n && lowerAlnum(s[i]) {
			i++
		}
		if i == start {
			return false
		}
		if i == n {
			return true
		}
		switch s[i] {
		case '.':
			i++
		case '_':
			i++
			if i < n && s[i] == '_' {
				i++
			}
		case '-':
			for i < n && s[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
			return false
		}
	}
	return true
}

func parseImage(text string) (imageRef, error) {
	if text == "" || len(text) > 600 || strings.TrimSpace(text) != text {
		return imageRef{}, errors.New("not a valid image reference")
	}
	name := text
	if at := strings.IndexByte(text, '@'); at >= 0 {
		name = text[:at]
		alg, hex, ok := strings.Cut(text[at+1:], ":")
		lengths := map[string]int{"sha256": 64, "sha384": 96, "sha512": 128}
		if !ok || lengths[alg] != len(hex) || !isHex(hex) {
			return imageRef{}, errors.New("invalid digest")
		}
	}
	if colon, slash := strings.LastIndexByte(name, ':'), strings.LastIndexByte(name, '/'); colon > slash {
		tag := name[colon+1:]
		if tag == "" || len(tag) > 128 {
			return imageRef{}, errors.New("invalid tag")
		}
		name = name[:colon]
	}
	first, rest, hasSlash := strings.Cut(name, "/")
	var ref imageRef
	if hasSlash && (strings.ContainsAny(first, ".:[") || first == "localhost" || strings.ToLower(first) != first) {
		host := strings.ToLower(first)
		if hubAliases[host] {
			host = "docker.io"
		}
		if host == "docker.io" && !strings.Contains(rest, "/") {
			rest = "library/" + rest
		}
		ref = imageRef{host, rest}
	} else if hasSlash {
		ref = imageRef{"docker.io", name}
	} else {
		ref = imageRef{"docker.io", "library/" + name}
	}
	if ref.path == "" {
		return imageRef{}, errors.New("empty repository path")
	}
	for _, component := range strings.Split(ref.path, "/") {
		if !validComponent(component) {
			return imageRef{}, fmt.Errorf("invalid repository path component %q", component)
		}
	}
	return ref, nil
}

type prefix struct{ registry, path string }

func (p prefix) covers(ref imageRef) bool {
	if ref.registry != p.registry {
		return false
	}
	return p.path == "" || ref.path == p.path || strings.HasPrefix(ref.path, p.path+"/")
}

func parsePrefix(text string) prefix {
	host, path, _ := strings.Cut(strings.TrimRight(text, "/"), "/")
	host = strings.ToLower(host)
	if hubAliases[host] {
		host = "docker.io"
	}
	return prefix{host, path}
}

// ---- the check ----------------------------------------------------------------------------

type checker struct {
	prefixes     map[string][]prefix // namespace -> allowed prefixes
	harborHosts  map[string]bool
	harborFormat string // "tool-%s"
	toolLabel    string
}

func (c *checker) allowed(namespace, image string) (bool, string) {
	ref, err := parseImage(image)
	if err != nil {
		return false, fmt.Sprintf("image %q is not a valid image reference (%v)", image, err)
	}
	for _, p := range c.prefixes[namespace] {
		if p.covers(ref) {
			return true, ""
		}
	}
	return false, fmt.Sprintf("image %q (%s/%s) is not under an allowed prefix", image, ref.registry, ref.path)
}

func (c *checker) pod(req *AdmissionRequest) []string {
	var pod Pod
	if err := json.Unmarshal(req.Object, &pod); err != nil {
		return []string{"the object is not a Pod: " + err.Error()}
	}
	var problems []string
	for _, list := range [][]Container{pod.Spec.InitContainers, pod.Spec.Containers, pod.Spec.EphemeralContainers} {
		for _, container := range list {
			if container.Image == nil {
				problems = append(problems, fmt.Sprintf("container %q has no image", container.Name))
				continue
			}
			if ok, why := c.allowed(req.Namespace, *container.Image); !ok {
				problems = append(problems, fmt.Sprintf("container %q: %s", container.Name, why))
			}
		}
	}
	return problems
}

func (c *checker) pipelineRun(req *AdmissionRequest) []string {
	var run PipelineRun
	if err := json.Unmarshal(req.Object, &run); err != nil {
		return []string{"the object is not a PipelineRun: " + err.Error()}
	}
	tool := run.Metadata.Labels[c.toolLabel]
	var problems []string
	for _, param := range run.Spec.Params {
		var value string
		if param.Name != "APP_IMAGE" && param.Name != "BUILDER_IMAGE" {
			continue
		}
		if err := json.Unmarshal(param.Value, &value); err != nil {
			problems = append(problems, param.Name+" must be a string")
			continue
		}
		if param.Name == "BUILDER_IMAGE" {
			if ok, why := c.allowed(req.Namespace, value); !ok {
				problems = append(problems, "BUILDER_IMAGE: "+why)
			}
			continue
		}
		ref, err := parseImage(value)
		project := fmt.Sprintf(c.harborFormat, tool)
		if err != nil || tool == "" || !c.harborHosts[ref.registry] || !strings.HasPrefix(ref.path, project+"/") {
			problems = append(problems, fmt.Sprintf("APP_IMAGE %q is not in the Harbor project %s", value, project))
		}
	}
	return problems
}

func (c *checker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	var review AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil ||
		review.Kind != "AdmissionReview" || review.APIVersion != "admission.k8s.io/v1" || review.Request.UID == "" {
		http.Error(w, "not an admission.k8s.io/v1 AdmissionReview", http.StatusBadRequest)
		return
	}
	req := review.Request
	var problems []string
	if req.Operation == "CREATE" || req.Operation == "UPDATE" {
		switch req.Kind.Kind {
		case "Pod":
			problems = c.pod(req)
		case "PipelineRun":
			problems = c.pipelineRun(req)
		}
	}
	reply := ReviewReply{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview",
		Response: AdmissionResponse{UID: req.UID, Allowed: len(problems) == 0}}
	if len(problems) > 0 {
		reply.Response.Status = &Status{Code: 403, Reason: "ImageNotAllowed", Message: strings.Join(problems, "; ")}
	}
	out, err := json.Marshal(reply)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

type config struct {
	Prefixes     map[string][]string `json:"prefixes"`
	HarborHosts  []string            `json:"harborHosts"`
	HarborFormat string              `json:"harborProjectFormat"`
	ToolLabel    string              `json:"toolLabel"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9443", "listen address")
	certFile := flag.String("cert", "tls.crt", "certificate (PEM)")
	keyFile := flag.String("key", "tls.key", "key (PEM)")
	configFile := flag.String("config", "goref.json", "allowed prefixes per namespace (JSON)")
	flag.Parse()

	data, err := os.ReadFile(*configFile)
	if err != nil {
		log.Fatal(err)
	}
	var cfg config
	if err := json.Unmarshal(data, &cfg); err != nil {
		log.Fatal(err)
	}
	c := &checker{prefixes: map[string][]prefix{}, harborHosts: map[string]bool{},
		harborFormat: cfg.HarborFormat, toolLabel: cfg.ToolLabel}
	for namespace, texts := range cfg.Prefixes {
		for _, text := range texts {
			c.prefixes[namespace] = append(c.prefixes[namespace], parsePrefix(text))
		}
	}
	for _, host := range cfg.HarborHosts {
		c.harborHosts[strings.ToLower(host)] = true
	}
	mux := http.NewServeMux()
	for _, path := range []string{"/validate/pods", "/mutate/build-pods", "/validate/pipelineruns"} {
		mux.Handle(path, c)
	}
	server := &http.Server{
		Addr:    *addr,
		Handler: mux,
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			NextProtos: []string{"http/1.1"},
		},
		// HTTP/1.1 only, like the API server's calls to a service webhook.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	fmt.Fprintf(os.Stderr, "goref listening on https://%s\n", *addr)
	log.Fatal(server.ListenAndServeTLS(*certFile, *keyFile))
}
