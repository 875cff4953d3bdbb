//! `mcp-image-gateway`: the service and its development helpers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mcp_image_gateway::cli::devkit;
use mcp_image_gateway::{config::ServeConfig, server};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "mcp-image-gateway", version, about = "MCP image-generation service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MCP service.
    Serve(Box<ServeConfig>),
    /// Run the OAuth authorization server MCP clients sign in with (Envoy
    /// routes `/oauth/*` and its metadata here): the development sign-in, or
    /// the company IdP by its issuer (`IDP_ISSUER`, `IDP_CLIENT_ID`, …).
    Authorize(Box<mcp_image_gateway::authorize::AuthorizeConfig>),
    /// The tamper-evident audit: `verify` checks every stored segment.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Content Credentials: `verify` checks an image's (a file or a URL).
    Provenance {
        #[command(subcommand)]
        command: ProvenanceCommand,
    },
    /// Erases one user's (`--user`) or a whole organisation's images,
    /// uploads, task records and opted-in prompts from the store, and
    /// records the erasure in the audit (counts, not contents). Later links
    /// to erased images get 410 Gone.
    Erase(Box<EraseArgs>),
    /// Writes the compliance evidence bundle (`manifest.json` and the files
    /// it lists) into `--out`: settings, audit verification, retention and
    /// erasures, access controls, TLS, SBOMs passed with `--include`, test
    /// and benchmark summaries. `make evidence` adds the SBOMs and licence checks.
    Evidence(Box<EvidenceArgs>),
    /// Create the development signing key and URL secret (once).
    DevInit {
        #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".state")]
        state_dir: PathBuf,
    },
    /// Print a development bearer token.
    Token {
        #[arg(long, default_value = "alice")]
        sub: String,
        #[arg(long, default_value = "acme")]
        org: String,
        #[arg(long, default_value = "images:generate")]
        scope: String,
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
        #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".state")]
        state_dir: PathBuf,
        #[arg(long, env = "GATEWAY_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
        public_base_url: String,
    },
    /// Print the development edge-filter configuration (JSON).
    FilterConfig {
        #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".state")]
        state_dir: PathBuf,
        #[arg(long, env = "GATEWAY_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
        public_base_url: String,
    },
    /// The weighted cost per image routing configurations would give for a
    /// traffic mix, offline (see `cli::cost_sim`); prints a markdown table.
    CostSim {
        /// The traffic mix (JSON).
        #[arg(long)]
        mix: PathBuf,
        /// Routes files to compare (repeatable): `NAME=PATH` or `PATH`.
        #[arg(long = "routes", value_parser = parse_named)]
        routes: Vec<(String, PathBuf)>,
        /// The chain for calls no route matches, as `provider:model` entries.
        #[arg(long, value_delimiter = ',', default_value = "openai:gpt-image-2")]
        default_chain: Vec<String>,
        /// A capability table to use instead of the built-in one.
        #[arg(long, env = "GATEWAY_MODELS_FILE")]
        models: Option<PathBuf>,
        /// The cost KPI in USD per image.
        #[arg(long, default_value_t = 0.002)]
        kpi: f64,
    },
    /// Render an Envoy config template; FILTER_CONFIG comes from the dev state.
    RenderEnvoy {
        #[arg(long)]
        template: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Also listen with TLS 1.3 on this port (self-signed development certificate).
        #[arg(long)]
        tls_port: Option<u16>,
        /// NAME=VALUE for a `${NAME}` placeholder (repeatable).
        #[arg(long = "set", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// NAME=PATH: the placeholder takes the file's contents (repeatable).
        #[arg(long = "set-file", value_parser = parse_var)]
        file_vars: Vec<(String, String)>,
        /// Run the edge filter as this Envoy dynamic module (`make native-module`)
        /// instead of the Wasm filter.
        #[arg(long)]
        dynamic_module: Option<PathBuf>,
        /// Live settings: the filter reads its settings from an ECDS file in
        /// this directory, rendered from `--settings` (see `watch-edge-settings`).
        #[arg(long, requires = "settings")]
        ecds_dir: Option<PathBuf>,
        /// The edge settings file (created with the development defaults when absent).
        #[arg(long)]
        settings: Option<PathBuf>,
        #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".state")]
        state_dir: PathBuf,
        #[arg(long, env = "GATEWAY_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
        public_base_url: String,
    },
    /// Writes the book's settings reference (edge settings, these flags, the
    /// admin files' formats) from the types that parse them.
    DocsReference {
        #[arg(long, default_value = mcp_image_gateway::cli::reference::DEFAULT_DIR)]
        out: PathBuf,
    },
    /// Check an edge settings file with the filter's own validation, offline;
    /// prints its SHA-256 (what `mcp_edge_settings_info` reports) or the refusal.
    CheckSettings { file: PathBuf },
    /// Trust an identity provider by its issuer: read its metadata (RFC 8414,
    /// else OpenID Connect discovery), take its `jwks_uri`, and add it to the
    /// edge settings file's `jwt.issuers` and first among the protected
    /// resource metadata's `authorization_servers` (`make run IDP_ISSUER=…`).
    TrustIssuer {
        /// The edge settings file (created with the development defaults when absent).
        #[arg(long)]
        settings: PathBuf,
        /// The IdP's issuer, exactly as its tokens' `iss`.
        #[arg(long)]
        issuer: String,
        /// The accepted audience (default: the MCP URL).
        #[arg(long)]
        audience: Option<String>,
        /// The organisation claim: a name or a JSON pointer (`/tid`).
        #[arg(long, default_value = "org")]
        org_claim: String,
        /// The scope claim (`scope`, or `scp`: a string or an array).
        #[arg(long, default_value = "scope")]
        scope_claim: String,
        #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".state")]
        state_dir: PathBuf,
        #[arg(long, env = "GATEWAY_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
        public_base_url: String,
    },
    /// Follow an edge settings file and hand each change to Envoy (ECDS);
    /// audits every change. Runs until stopped.
    WatchEdgeSettings {
        #[arg(long)]
        settings: PathBuf,
        /// The directory `render-envoy --ecds-dir` set up.
        #[arg(long)]
        ecds_dir: PathBuf,
        /// Envoy's admin URL, to confirm each change runs.
        #[arg(long)]
        envoy_admin: Option<String>,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
}

fn parse_named(value: &str) -> Result<(String, PathBuf), String> {
    Ok(match value.split_once('=') {
        Some((name, path)) => (name.to_string(), PathBuf::from(path)),
        None => (value.to_string(), PathBuf::from(value)),
    })
}

fn parse_var(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {value:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(config) => {
            init_logging_with(true)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let served = server::serve(*config, shutdown).await;
            mcp_image_gateway::telemetry::traces::flush();
            served
        }
        Command::Authorize(config) => {
            init_logging();
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            mcp_image_gateway::authorize::serve(*config, shutdown).await
        }
        Command::DevInit { state_dir } => devkit::init(&state_dir),
        Command::Erase(args) => erase(&args).await,
        Command::Evidence(args) => {
            use mcp_image_gateway::cli::evidence;
            let sources = evidence::Sources {
                out: args.out.clone(),
                edge_settings: args.edge_settings.clone(),
                deploy_dir: args.deploy_dir.clone(),
                bench_dir: args.bench_dir.clone(),
                test_output: args.test_output.clone(),
                include: args.include.clone(),
                since: args.since,
            };
            let manifest = evidence::collect(&args.config, &sources).await?;
            let files = manifest["files"].as_array().map_or(0, Vec::len);
            println!("{}", serde_json::json!({"out": args.out, "files": files}));
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => verify_audit(&args).await,
        Command::CostSim {
            mix,
            routes,
            default_chain,
            models,
            kpi,
        } => {
            use mcp_image_gateway::cli::cost_sim;
            use mcp_image_gateway::routing::{catalog::ModelCatalog, pricing::Pricing, rules::RoutesSpec};
            let mix: cost_sim::Mix = serde_json::from_str(
                &std::fs::read_to_string(&mix).with_context(|| format!("reading {}", mix.display()))?,
            )
            .with_context(|| format!("the mix {} is not valid", mix.display()))?;
            let catalog = std::sync::Arc::new(match models {
                Some(path) => ModelCatalog::from_file(&path)?,
                None => ModelCatalog::builtin()?,
            });
            let free = Pricing {
                input_per_million_tokens: 0.0,
                output_per_million_tokens: 0.0,
                per_image: 0.0,
            };
            let mut results = Vec::new();
            let configs = if routes.is_empty() {
                vec![("default chain".to_string(), None)]
            } else {
                routes.into_iter().map(|(name, path)| (name, Some(path))).collect()
            };
            for (name, path) in configs {
                let spec = match path {
                    Some(path) => RoutesSpec::from_file(&path)?,
                    None => RoutesSpec::default(),
                };
                let (routes, default) = cost_sim::routes(spec, default_chain.clone(), &catalog)?;
                results.push((name, cost_sim::simulate(&mix, &routes, &default, &catalog, free)?));
            }
            print!("{}", cost_sim::table(&results, kpi));
            Ok(())
        }
        Command::Token {
            sub,
            org,
            scope,
            ttl_secs,
            state_dir,
            public_base_url,
        } => {
            let token = devkit::mint_token(
                &state_dir,
                &devkit::TokenRequest {
                    issuer: devkit::dev_issuer(&public_base_url),
                    subject: sub,
                    org,
                    audience: devkit::audience(&public_base_url),
                    scope,
                    valid_for_secs: ttl_secs,
                    issued_at: None,
                },
            )?;
            println!("{token}");
            Ok(())
        }
        Command::FilterConfig {
            state_dir,
            public_base_url,
        } => {
            println!("{}", devkit::filter_config(&state_dir, &public_base_url)?);
            Ok(())
        }
        Command::DocsReference { out } => {
            mcp_image_gateway::cli::reference::write(&out).with_context(|| format!("writing {}", out.display()))?;
            println!("settings reference written to {}", out.display());
            Ok(())
        }
        Command::Provenance {
            command: ProvenanceCommand::Verify { image, anchor, json },
        } => {
            use mcp_image_gateway::cli::provenance;
            let report = provenance::check(&image, anchor.as_ref()).await;
            let anchored = anchor.is_some();
            let valid = report.as_ref().is_ok_and(|r| provenance::passes(r, anchored));
            match &report {
                Ok(report) if json => println!("{}", serde_json::to_string(report)?),
                Ok(report) => print!("{}", provenance::render(report)),
                Err(error) => eprintln!("{error:#}"),
            }
            if anchored && report.as_ref().is_ok_and(|r| r.is_valid()) && !valid {
                eprintln!("untrusted: the signing certificate does not chain to the given anchor");
            }
            if !valid {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::CheckSettings { file } => {
            use mcp_image_gateway::cli::edge_settings;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            match edge_settings::check(&bytes) {
                Ok(accepted) => {
                    println!("{}: valid edge settings, sha256 {}", file.display(), accepted.sha256);
                    Ok(())
                }
                Err(reason) => {
                    eprintln!("{}: refused: {reason}", file.display());
                    std::process::exit(1);
                }
            }
        }
        Command::WatchEdgeSettings {
            settings,
            ecds_dir,
            envoy_admin,
            interval_ms,
        } => {
            use mcp_image_gateway::cli::edge_settings::{self, Watcher, RESOURCE_FILE};
            init_logging();
            let template_path = edge_settings::resource_template_path(&ecds_dir);
            let template = std::fs::read_to_string(&template_path).with_context(|| {
                format!(
                    "reading {} (run render-envoy --ecds-dir first)",
                    template_path.display()
                )
            })?;
            let mut watcher = Watcher::new(settings, template, ecds_dir.join(RESOURCE_FILE), envoy_admin);
            watcher.settle()?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            watcher
                .run(std::time::Duration::from_millis(interval_ms), shutdown)
                .await;
            Ok(())
        }
        Command::TrustIssuer {
            settings,
            issuer,
            audience,
            org_claim,
            scope_claim,
            state_dir,
            public_base_url,
        } => {
            use mcp_image_gateway::cli::identity_providers::{self, TrustedIssuer};
            if !settings.exists() {
                let defaults = devkit::filter_config(&state_dir, &public_base_url)?;
                std::fs::write(&settings, format!("{}\n", serde_json::to_string_pretty(&defaults)?))?;
            }
            let audience = audience.unwrap_or_else(|| devkit::audience(&public_base_url));
            identity_providers::trust_file(&settings, &issuer, |jwks_url| TrustedIssuer {
                issuer: issuer.clone(),
                jwks_url,
                audience,
                org_claim,
                scope_claim,
            })
            .await?;
            println!("trusting {issuer} (keys from its jwks_uri) in {}", settings.display());
            Ok(())
        }
        Command::RenderEnvoy {
            template,
            tls_port,
            file_vars,
            dynamic_module,
            out,
            vars,
            ecds_dir,
            settings,
            state_dir,
            public_base_url,
        } => {
            let mut vars: BTreeMap<String, String> = vars.into_iter().collect();
            if let Some(port) = tls_port {
                let (cert, key) = devkit::ensure_dev_certificate(&state_dir)?;
                vars.insert(
                    "EXTRA_LISTENERS".into(),
                    devkit::tls_listener_yaml(&std::path::absolute(&cert)?, &std::path::absolute(&key)?, port),
                );
            }
            for (name, path) in file_vars {
                let mut text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                if name == "FILTER_CONFIG" {
                    // One line, so it sits inside the YAML block scalar.
                    let mut json: serde_json::Value =
                        serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?;
                    devkit::sort_keys(&mut json);
                    text = json.to_string();
                }
                vars.insert(name, text.trim_end().to_string());
            }
            // The development filter configuration unless one was given.
            if !vars.contains_key("FILTER_CONFIG") {
                vars.insert("FILTER_CONFIG".into(), {
                    let mut config = devkit::filter_config(&state_dir, &public_base_url)?;
                    devkit::sort_keys(&mut config);
                    config.to_string()
                });
            }
            for (name, default) in [
                ("LISTEN_ADDRESS", "127.0.0.1"),
                ("ADMIN_ADDRESS", "127.0.0.1"),
                ("UPSTREAM_ADDRESS", "127.0.0.1"),
                ("UPSTREAM_CLUSTER_TYPE", "STATIC"),
                ("AUTHORIZE_ADDRESS", "127.0.0.1"),
                ("AUTHORIZE_PORT", "8082"),
                ("AUTHORIZE_CLUSTER_TYPE", "STATIC"),
                ("XFF_TRUSTED_HOPS", "0"),
                ("LISTEN_REUSE_PORT", "true"),
                // Browser hosts allowed to call /mcp (CORS): loopback in development.
                ("CORS_ORIGIN_REGEX", devkit::DEV_CORS_ORIGIN_REGEX),
            ] {
                vars.entry(name.into()).or_insert_with(|| default.into());
            }
            // Optional parts of the template default to nothing.
            vars.entry("EXTRA_CLUSTERS".into()).or_default();
            vars.entry("EXTRA_UPSTREAM_ENDPOINTS".into()).or_default();
            vars.entry("EXTRA_LISTENERS".into()).or_default();
            // OpenTelemetry traces when OTEL_EXPORTER_OTLP_ENDPOINT is set.
            let tracing_block = template.with_file_name("tracing.yaml.tmpl");
            match devkit::envoy_tracing(&std::fs::read_to_string(&tracing_block).unwrap_or_default(), |name| {
                std::env::var(name).ok()
            })? {
                Some(tracing) => {
                    vars.insert("TRACING".into(), tracing.hcm.trim_end().to_string());
                    let clusters = vars.entry("EXTRA_CLUSTERS".into()).or_default();
                    if !clusters.is_empty() && !clusters.ends_with('\n') {
                        clusters.push('\n');
                    }
                    clusters.push_str(tracing.cluster.trim_end());
                }
                None => {
                    vars.entry("TRACING".into()).or_default();
                }
            }
            let mut text =
                std::fs::read_to_string(&template).with_context(|| format!("reading {}", template.display()))?;
            if let Some(module) = dynamic_module {
                let snippet = template.with_file_name("dynamic-module-filter.yaml.tmpl");
                let block =
                    std::fs::read_to_string(&snippet).with_context(|| format!("reading {}", snippet.display()))?;
                text = devkit::with_dynamic_module(&text, &block, &std::path::absolute(&module)?)?;
            }
            use mcp_image_gateway::cli::identity_providers;
            let rendered = match (ecds_dir, settings) {
                (Some(dir), Some(settings)) => {
                    use mcp_image_gateway::cli::edge_settings;
                    if !settings.exists() {
                        let defaults = devkit::filter_config(&state_dir, &public_base_url)?;
                        std::fs::write(&settings, format!("{}\n", serde_json::to_string_pretty(&defaults)?))?;
                    }
                    let bytes = std::fs::read(&settings)?;
                    if let Err(reason) = edge_settings::check(&bytes) {
                        anyhow::bail!(
                            "{} is refused: {reason}\nfix it, or start over from the defaults with `make run RESET_SETTINGS=1`",
                            settings.display()
                        );
                    }
                    let json: serde_json::Value = serde_json::from_slice(&bytes)?;
                    identity_providers::add_jwks_clusters(&mut vars, &json)?;
                    edge_settings::install(&text, &vars, &std::path::absolute(&dir)?, &bytes)?
                }
                _ => {
                    let json: serde_json::Value =
                        serde_json::from_str(vars.get("FILTER_CONFIG").map_or("{}", String::as_str))?;
                    identity_providers::add_jwks_clusters(&mut vars, &json)?;
                    devkit::render(&text, &vars)?
                }
            };
            std::fs::write(&out, rendered).with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
    }
}

#[derive(clap::Args)]
struct EraseArgs {
    /// The organisation whose data goes.
    #[arg(long)]
    org: String,
    /// Only this user's data (the `sub` of their token), not the whole organisation's.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    config: ServeConfig,
}

#[derive(clap::Args)]
struct EvidenceArgs {
    /// The folder to write (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// The edge settings in force (the filter's JSON); default `{state_dir}/edge-settings.json`.
    #[arg(long)]
    edge_settings: Option<PathBuf>,
    /// Kubernetes and Istio manifests to take the access controls from.
    #[arg(long, default_value = "deploy")]
    deploy_dir: PathBuf,
    /// Benchmark tables (`*.md`) to include.
    #[arg(long, default_value = "bench/results")]
    bench_dir: PathBuf,
    /// The latest `make test` output (summarised).
    #[arg(long, default_value = "target/test-output.txt")]
    test_output: PathBuf,
    /// Files to add under `sbom/` (CycloneDX SBOMs, licence and source checks).
    #[arg(long)]
    include: Vec<PathBuf>,
    /// Only lifecycle events (erasures, sweeps, settings changes) from this time (RFC 3339).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    config: ServeConfig,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks every audit segment in the store (the serve settings say
    /// where; the development defaults need no flags) and names the first
    /// break, and says of each run whether it ended, runs, or stopped
    /// without an anchored end (`incomplete`: a crash, or its tail removed).
    /// Exit status 1 when the chain is broken.
    Verify(Box<VerifyArgs>),
}

#[derive(Subcommand)]
enum ProvenanceCommand {
    /// Prints whether an image's C2PA Content Credentials are valid (and
    /// trusted, with `--anchor`), the signer, the actions and the chain of
    /// images it was made from. Exit status 1 when invalid or absent.
    Verify {
        /// A file, or an http(s) URL (a signed image link).
        image: String,
        /// PEM roots to trust (the development root is `.state/provenance/ca.pem`).
        #[arg(long)]
        anchor: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// Only the segments written since this time (RFC 3339): each replica's
    /// chain is checked from its first segment of the period.
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    config: ServeConfig,
}

async fn erase(args: &EraseArgs) -> anyhow::Result<()> {
    use mcp_image_gateway::storage::erasure;
    use mcp_image_gateway::telemetry::audit_chain::{self, Chain};
    let keys = args.config.audit_keys()?;
    let store = args.config.image_store()?;
    let now = chrono::Utc::now();
    let erased = store
        .erase(&args.org, args.user.as_deref(), now)
        .await
        .map_err(|e| anyhow::anyhow!("erasing {}: {e}", args.org))?;
    let mut event = serde_json::json!({
        "target": "audit",
        "event": "erasure",
        "org": args.org,
        "scope": if args.user.is_some() { "user" } else { "org" },
        // The pseudonym the store files the user under, never the id.
        "owner": args.user.as_deref().map(|user| erasure::owner_id(&args.org, user)),
        "at": now.to_rfc3339(),
    });
    if let (Some(event), serde_json::Value::Object(counts)) = (event.as_object_mut(), serde_json::to_value(&erased)?) {
        event.extend(counts);
    }
    // Its own short chain, closed, signed and its end anchored: `audit
    // verify` checks it like a replica's.
    let mut chain = Chain::new(format!("erasure-{}", audit_chain::run_id(now)));
    chain.push(event.clone());
    let segment = chain.close(&keys, now);
    let end = chain.anchor(&keys, now, now, true);
    for (key, text) in [segment, end] {
        store
            .put_audit(&key, text.into())
            .await
            .map_err(|e| anyhow::anyhow!("the erasure is done but its audit record could not be stored: {e}"))?;
    }
    println!("{event}");
    Ok(())
}

async fn verify_audit(args: &VerifyArgs) -> anyhow::Result<()> {
    let config = &args.config;
    use mcp_image_gateway::telemetry::audit_chain;
    let keys = config.audit_keys()?;
    let segments = mcp_image_gateway::cli::evidence::audit_segments(&config.image_store()?, args.since).await?;
    let report = audit_chain::verify_from(&segments, &keys, args.since.is_some(), chrono::Utc::now());
    let mut printed = report.to_json();
    if let Some(fields) = printed.as_object_mut() {
        fields.insert("since".into(), serde_json::json!(args.since));
    }
    println!("{printed}");
    match report.broken {
        Some(problem) => anyhow::bail!("the audit chain is broken: {problem}"),
        None => Ok(()),
    }
}

/// JSON logs, one line per event; spans exported too when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set and `traces` is true.
fn init_logging_with(traces: bool) -> anyhow::Result<()> {
    use mcp_image_gateway::telemetry::traces::ByCallsite;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let export = if traces {
        mcp_image_gateway::telemetry::traces::layer()?
    } else {
        None
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_span_list(false)
                // Lines are events; spans reach the exporter, not the log.
                .with_filter(ByCallsite(|meta| meta.is_event())),
        )
        .with(export)
        .with(mcp_image_gateway::telemetry::audit_sink::ChainLayer)
        .init();
    Ok(())
}

fn init_logging() {
    let _ = init_logging_with(false);
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
