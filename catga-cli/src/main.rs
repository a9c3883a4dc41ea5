//! `catga`: the operator's tool for a Catga deployment.
//!
//! - `catga dlq list | show ID | replay ID… | purge ID…` (`--all` for every
//!   one): the dead letters of JetStream (reliable events and durable
//!   commands that could not be handled; ids `nats:<sequence>`) and of the
//!   Redis outbox (entries the relay could not publish; ids
//!   `redis:<shard>/<stream id>`). A replay sends a dead letter back where it
//!   came from, with its message id, so consumers' idempotency still knows it.
//! - `catga outbox`: the outbox backlog, its dead letters and the relays
//!   reading it.
//! - `catga saga failed NAME | show ID | compensate ID…`: sagas whose
//!   compensation failed, and resuming it once the cause is fixed.
//!
//! Where: `--nats URL` (repeatable) or `CATGA_NATS_URL`, `--redis URL` or
//! `CATGA_REDIS_URL` (`--redis-cluster` for a cluster), `--prefix` (default
//! `catga`) and `--outbox-shards` (default 8), the same the services use. Exits 0 when everything asked was
//! done, 1 with the reason otherwise.

use std::process::ExitCode;

use catga_core::store::OutboxStore;
use catga_core::{Error, ErrorKind, Result};
use catga_nats::{DeadLetters, NatsOptions};
use catga_redis::{RedisOptions, RedisStore};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "catga",
    version,
    about = "Operate a Catga deployment: dead letters, the outbox"
)]
struct Cli {
    /// NATS server URL (repeat for a cluster).
    #[arg(
        long = "nats",
        env = "CATGA_NATS_URL",
        value_delimiter = ',',
        global = true
    )]
    nats: Vec<String>,
    /// Redis URL.
    #[arg(long, env = "CATGA_REDIS_URL", global = true)]
    redis: Option<String>,
    /// The Redis URL is a node of a Redis Cluster.
    #[arg(long, global = true)]
    redis_cluster: bool,
    /// Outbox shards of the deployment's Redis stores.
    #[arg(long, default_value_t = 8, global = true)]
    outbox_shards: u32,
    /// Subject and key prefix of the deployment.
    #[arg(long, default_value = "catga", global = true)]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead letters of JetStream and of the Redis outbox.
    Dlq {
        #[command(subcommand)]
        action: Dlq,
    },
    /// The outbox backlog, its dead letters and the relays reading it.
    Outbox,
    /// Sagas kept in Redis: the failed ones, one saga, resuming a compensation.
    Saga {
        #[command(subcommand)]
        action: Saga,
    },
}

#[derive(Debug, Subcommand)]
enum Saga {
    /// The sagas of definition NAME that ended Failed (an undo kept failing).
    Failed {
        /// The saga definition's name.
        name: String,
    },
    /// One saga: status, step, error, history.
    Show {
        /// The saga's id.
        id: String,
    },
    /// Resumes the compensation of failed sagas once the cause is fixed;
    /// the coordinator, wherever it leads, undoes what is left.
    Compensate {
        /// Saga ids.
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// One line per dead letter: id, name, why.
    List {
        /// At most this many from each backend.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Everything about one dead letter.
    Show {
        /// `nats:<sequence>` or `redis:<shard>/<stream id>`.
        id: String,
    },
    /// Sends dead letters back where they came from, then removes them.
    Replay(Targets),
    /// Removes dead letters.
    Purge(Targets),
}

#[derive(Debug, Args)]
struct Targets {
    /// `nats:<sequence>` or `redis:<shard>/<stream id>`.
    ids: Vec<String>,
    /// Every dead letter of every configured backend.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
}

/// A dead letter's id, by backend.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Id {
    Nats(u64),
    Redis(String),
}

impl Id {
    fn parse(s: &str) -> Result<Id> {
        let bad = || {
            Error::new(
                ErrorKind::Validation,
                format!("`{s}` is not a dead-letter id: `nats:<sequence>` or `redis:<shard>/<id>`"),
            )
        };
        match s.split_once(':') {
            Some(("nats", seq)) => seq.parse().map(Id::Nats).map_err(|_| bad()),
            Some(("redis", id)) if id.contains('/') => Ok(Id::Redis(id.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Nats(seq) => write!(f, "nats:{seq}"),
            Id::Redis(id) => write!(f, "redis:{id}"),
        }
    }
}

/// The backends the command line names.
struct Backends {
    nats: Option<DeadLetters>,
    redis: Option<RedisStore>,
}

impl Backends {
    async fn connect(cli: &Cli) -> Result<Backends> {
        let nats = if cli.nats.is_empty() {
            None
        } else {
            let options = NatsOptions::new(cli.nats.clone()).prefix(cli.prefix.clone());
            Some(DeadLetters::connect(options).await?)
        };
        let redis = match &cli.redis {
            None => None,
            Some(url) => {
                let options = if cli.redis_cluster {
                    RedisOptions::cluster([url.clone()])
                } else {
                    RedisOptions::new(url.clone())
                };
                let options = options
                    .prefix(cli.prefix.clone())
                    .outbox_shards(cli.outbox_shards);
                Some(RedisStore::connect(options).await?)
            }
        };
        if nats.is_none() && redis.is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                "name a backend: --nats URL (or CATGA_NATS_URL) and/or --redis URL (or \
                 CATGA_REDIS_URL)",
            ));
        }
        Ok(Backends { nats, redis })
    }

    fn nats(&self) -> Result<&DeadLetters> {
        self.nats
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Config, "a `nats:` id needs --nats URL"))
    }

    fn redis(&self) -> Result<&RedisStore> {
        self.redis
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Config, "a `redis:` id needs --redis URL"))
    }

    async fn all_ids(&self) -> Result<Vec<Id>> {
        let mut ids = Vec::new();
        if let Some(nats) = &self.nats {
            ids.extend(
                nats.list(usize::MAX)
                    .await?
                    .iter()
                    .map(|l| Id::Nats(l.sequence)),
            );
        }
        if let Some(redis) = &self.redis {
            let letters = redis.outbox_dead_letters(usize::MAX).await?;
            ids.extend(letters.into_iter().map(|l| Id::Redis(l.id)));
        }
        Ok(ids)
    }
}

async fn run(cli: Cli) -> Result<()> {
    let backends = Backends::connect(&cli).await?;
    match cli.command {
        Command::Dlq { action } => dlq(&backends, action).await,
        Command::Outbox => outbox(backends.redis()?).await,
        Command::Saga { action } => saga(backends.redis()?, action).await,
    }
}

fn saga_id(s: &str) -> Result<catga_core::Uuid> {
    s.parse().map_err(|_| {
        Error::new(
            ErrorKind::Validation,
            format!("`{s}` is not a saga id (a UUID)"),
        )
    })
}

async fn saga(redis: &RedisStore, action: Saga) -> Result<()> {
    use catga_core::saga::SagaStore;
    match action {
        Saga::Failed { name } => {
            for id in redis.failed(&name).await? {
                if let Some(s) = redis.load(id).await? {
                    println!(
                        "{id}\t{}\t{}",
                        s.failed_step.as_deref().unwrap_or("-"),
                        s.error.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        Saga::Show { id } => {
            let id = saga_id(&id)?;
            let s = redis.load(id).await?.ok_or_else(|| {
                Error::new(
                    ErrorKind::Validation,
                    format!("no saga {id} (or it expired)"),
                )
            })?;
            println!("id: {}\nsaga: {}\nstatus: {:?}", s.id, s.saga, s.status);
            println!(
                "step: {}\ncompleted: {:?}\nversion: {}",
                s.step, s.completed, s.version
            );
            println!("failed step: {}", s.failed_step.as_deref().unwrap_or("-"));
            println!("error: {}", s.error.as_deref().unwrap_or("-"));
            for e in &s.history {
                println!("history {}\t{}\t{}\t{}", e.at_ms, e.step, e.what, e.detail);
            }
            Ok(())
        }
        Saga::Compensate { ids } => {
            let mut failed = 0;
            for id in &ids {
                let resumed = match saga_id(id) {
                    Ok(id) => catga_core::saga::resume_compensation(redis, id)
                        .await
                        .map(drop),
                    Err(e) => Err(e),
                };
                report("compensating", id, resumed, &mut failed);
            }
            verdict(failed, "resumed")
        }
    }
}

async fn dlq(b: &Backends, action: Dlq) -> Result<()> {
    match action {
        Dlq::List { limit } => {
            if let Some(nats) = &b.nats {
                for l in nats.list(limit).await? {
                    println!(
                        "nats:{}\t{}\t{}\t{}",
                        l.sequence,
                        l.name,
                        l.error_kind.as_deref().unwrap_or("-"),
                        l.error_message.as_deref().unwrap_or("-"),
                    );
                }
            }
            if let Some(redis) = &b.redis {
                for l in redis.outbox_dead_letters(limit).await? {
                    println!(
                        "redis:{}\t{}\t-\t{}",
                        l.id,
                        l.name.as_deref().unwrap_or("?"),
                        l.reason.as_deref().unwrap_or("-"),
                    );
                }
            }
            Ok(())
        }
        Dlq::Show { id } => match Id::parse(&id)? {
            Id::Nats(seq) => {
                let l = b.nats()?.show(seq).await?;
                println!(
                    "id: nats:{}\nname: {}\ntime: {}",
                    l.sequence, l.name, l.time
                );
                println!("from: {}", l.subject.as_deref().unwrap_or("-"));
                println!(
                    "deliveries: {}",
                    l.deliveries.map_or("-".into(), |d| d.to_string())
                );
                println!(
                    "failed service: {}",
                    l.failed_service.as_deref().unwrap_or("-")
                );
                println!("error kind: {}", l.error_kind.as_deref().unwrap_or("-"));
                println!("error: {}", l.error_message.as_deref().unwrap_or("-"));
                for (name, values) in l.headers.iter() {
                    for v in values {
                        println!("header {}: {}", name.as_ref() as &str, v.as_str());
                    }
                }
                println!("payload: {} bytes", l.payload.len());
                Ok(())
            }
            Id::Redis(id) => {
                let l = b.redis()?.outbox_dead_letter(&id).await?;
                println!(
                    "id: redis:{}\nname: {}",
                    l.id,
                    l.name.as_deref().unwrap_or("?")
                );
                println!("message id: {}", l.message_id.as_deref().unwrap_or("-"));
                println!("outbox entry: {}", l.entry_id.as_deref().unwrap_or("-"));
                println!("reason: {}", l.reason.as_deref().unwrap_or("-"));
                Ok(())
            }
        },
        Dlq::Replay(t) => {
            each(b, t, "replayed", |b, id| async move {
                match id {
                    Id::Nats(seq) => b.nats()?.replay(seq).await,
                    Id::Redis(id) => b.redis()?.replay_outbox_dead_letter(&id).await,
                }
            })
            .await
        }
        Dlq::Purge(t) => {
            each(b, t, "purged", |b, id| async move {
                match id {
                    Id::Nats(seq) => b.nats()?.purge(seq).await,
                    Id::Redis(id) => b.redis()?.purge_outbox_dead_letter(&id).await,
                }
            })
            .await
        }
    }
}

/// Runs `act` on every target; reports each; fails when any failed.
async fn each<'b, F, Fut>(b: &'b Backends, t: Targets, done: &str, act: F) -> Result<()>
where
    F: Fn(&'b Backends, Id) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let ids = if t.all {
        b.all_ids().await?
    } else if t.ids.is_empty() {
        return Err(Error::new(
            ErrorKind::Validation,
            "name the dead letters, or --all",
        ));
    } else {
        t.ids
            .iter()
            .map(|s| Id::parse(s))
            .collect::<Result<Vec<_>>>()?
    };
    let mut failed = 0;
    for id in ids {
        let outcome = act(b, id.clone()).await;
        report(done, &id, outcome, &mut failed);
    }
    verdict(failed, done)
}

/// Prints what became of one target (`<done> <id>`, or the error on
/// stderr) and counts the failures.
fn report(done: &str, id: &dyn std::fmt::Display, outcome: Result<()>, failed: &mut usize) {
    match outcome {
        Ok(()) => println!("{done} {id}"),
        Err(e) => {
            *failed += 1;
            eprintln!("{id}: {e}");
        }
    }
}

/// `Ok` when nothing failed; otherwise how many were not `done`.
fn verdict(failed: usize, done: &str) -> Result<()> {
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Store, format!("{failed} not {done}")))
    }
}

async fn outbox(redis: &RedisStore) -> Result<()> {
    println!("backlog: {}", redis.backlog().await?);
    println!("dead letters: {}", redis.dead_letter_count().await?);
    for c in redis.relay_consumers().await? {
        println!(
            "relay shard {}\t{}\tpending {}\tidle {} ms",
            c.shard, c.name, c.pending, c.idle_ms
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("catga: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("catga: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_backend() {
        assert_eq!(Id::parse("nats:42").unwrap(), Id::Nats(42));
        assert_eq!(
            Id::parse("redis:3/1700000000000-0").unwrap(),
            Id::Redis("3/1700000000000-0".into())
        );
        for bad in ["42", "nats:x", "redis:12", "kafka:1"] {
            assert!(Id::parse(bad).is_err(), "{bad}");
        }
    }
}
