// Command handover is the failover sidecar: it runs beside an application,
// listens on localhost, health-checks a list of brokers and sends every
// client connection to whichever broker is master now. Clients need no
// change and no knowledge of failover.
//
//	handover -config proxy.toml        run
//	handover -check -config proxy.toml validate the file, list every problem
//	handover -version                  the version, commit, its date and the Go version
//	handover ctl [-admin ADDR] status|disable|drain|enable ...
//	                                   a running sidecar's state, and runtime control of its backends
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"handover/internal/buildinfo"
	"handover/sidecar"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "ctl" {
		return sidecar.Ctl(args[1:], os.Stdout, os.Stderr)
	}
	fs := flag.NewFlagSet("handover", flag.ContinueOnError)
	path := fs.String("config", "proxy.toml", "TOML config file")
	check := fs.Bool("check", false, "validate the config file and exit: 0 if valid, 1 with every problem listed")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Println("handover", sidecar.Version, buildinfo.Read())
		return 0
	}
	cfg, err := sidecar.LoadConfig(*path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "handover: %s is not valid:\n%v\n", *path, err)
		return 1
	}
	if *check {
		fmt.Printf("%s: ok (%d services)\n", *path, len(cfg.Services))
		return 0
	}
	sc, err := sidecar.New(cfg, *path, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "handover:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP reloads the config file, as nginx and HAProxy do.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				sc.RequestReload(ctx) // outcome is logged and shown in /status
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := sc.Run(ctx); err != nil {
		sc.Log().WithError(err).Error("exiting")
		return 1
	}
	return 0
}
