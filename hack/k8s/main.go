// Command k8s is one binary for the test control plane: it runs
// kube-apiserver, kube-controller-manager, kube-scheduler or kubectl,
// chosen by the name it is invoked under (symlinks) or by its first argument.
// One binary links the shared Kubernetes packages once, which roughly halves
// build time and disk compared with four separate binaries.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var roles = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubectl":                 kubectlcmd.NewDefaultKubectlCommand,
}

func main() {
	role := filepath.Base(os.Args[0])
	if _, ok := roles[role]; !ok && len(os.Args) > 1 {
		role = os.Args[1]
		os.Args = os.Args[1:]
	}
	newCommand, ok := roles[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: k8s {kube-apiserver|kube-controller-manager|kube-scheduler|kubectl} [flags]\n")
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}
