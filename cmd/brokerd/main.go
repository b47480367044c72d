// Command brokerd is a durable STOMP 1.0/1.1/1.2 broker with master/slave
// locking: several brokerd sharing one data directory elect one master by a
// file lock; the others wait as slaves with their STOMP port closed.
//
//	brokerd -listen 127.0.0.1:61613 -admin 127.0.0.1:8161 -data ./data
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"handover/brokerd"
	"handover/internal/conf"
)

// fileConfig is brokerd's TOML config file: the broker options plus logging.
type fileConfig struct {
	brokerd.Options
	LogLevel  string `toml:"log_level"`
	LogFormat string `toml:"log_format"`
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("brokerd", flag.ContinueOnError)
	cfg := fileConfig{Options: brokerd.NewOptions(), LogLevel: "info", LogFormat: "text"}
	configPath := fs.String("config", "", "TOML config file; flags given on the command line override it")
	listen := fs.String("listen", cfg.Listen, "STOMP listen address (go-sockaddr templates allowed), opened only while master")
	admin := fs.String("admin", cfg.Admin, "admin HTTP address for /status, /readyz, /healthz, /metrics")
	data := fs.String("data", cfg.Data, "data directory shared by master and slaves (journal and lock)")
	level := fs.String("log-level", cfg.LogLevel, "log level: debug, info, warn, error")
	format := fs.String("log-format", cfg.LogFormat, "log format: text or json")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Println("brokerd", brokerd.Version)
		return 0
	}
	if *configPath != "" {
		if _, err := conf.LoadFile(*configPath, &cfg); err != nil {
			fmt.Fprintln(os.Stderr, "brokerd: config:", err)
			return 2
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "listen":
			cfg.Listen = *listen
		case "admin":
			cfg.Admin = *admin
		case "data":
			cfg.Data = *data
		case "log-level":
			cfg.LogLevel = *level
		case "log-format":
			cfg.LogFormat = *format
		}
	})
	logger, err := conf.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		return 2
	}
	for _, a := range []*string{&cfg.Listen, &cfg.Admin} {
		if *a, err = conf.ResolveAddr(*a); err != nil {
			fmt.Fprintln(os.Stderr, "brokerd:", err)
			return 2
		}
	}
	opts := cfg.Options
	opts.Log = logger.WithField("component", "brokerd")
	srv, err := brokerd.New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := srv.Run(ctx); err != nil {
		opts.Log.WithError(err).Error("exiting")
		if errors.Is(err, brokerd.ErrLeaseLost) {
			return 3
		}
		return 1
	}
	return 0
}
