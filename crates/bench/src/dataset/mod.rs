//! `alp dataset`: loads a seeded, realistic data set into a running suite through its public
//! APIs — courses with prerequisite chains, items, learners with Zipf-skewed enrolments, and
//! attempt histories — so every service's derived state (memory, models, progress) is what real
//! use would have left. Idempotent (creates tolerate ALREADY_EXISTS, attempts have stable ids)
//! and resumable from a checkpoint file written after every chunk.

pub mod spec;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alp_proto::content::v1::{CreateCourseRequest, UpsertItemsRequest, UpsertSkillsRequest};
use alp_proto::scheduler::v1::{SubmitAttemptRequest, submit_attempt_request};
use alp_proto::user::v1::{CreateLearnerRequest, EnrolLearnerRequest, Learner};
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tonic::Code;

pub use self::spec::{DatasetSpec, Persona, Zipf};
use crate::target::{Clients, TargetArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct DatasetArgs {
    #[command(flatten)]
    pub spec: DatasetSpec,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Progress of the load, so an interrupted run resumes where it stopped.
    #[arg(long, default_value = "alp-dataset.json")]
    pub checkpoint: PathBuf,
    /// Requests in flight while loading.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Hide the progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

/// What has been loaded; written after every chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    spec: DatasetSpec,
    /// Histories end here (milliseconds since the epoch), fixed at the first run so a resumed
    /// load sends the same answer times again.
    anchor_ms: i64,
    content_done: bool,
    learners_done: u32,
    histories_done: u32,
    attempts: u64,
}

impl Checkpoint {
    fn load_or_start(path: &Path, spec: &DatasetSpec) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let checkpoint: Checkpoint = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a data-set checkpoint", path.display()))?;
                if &checkpoint.spec != spec {
                    bail!(
                        "{} is the checkpoint of a different data set ({:?}); pass the same data-set flags or delete it",
                        path.display(),
                        checkpoint.spec
                    );
                }
                Ok(checkpoint)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint {
                spec: spec.clone(),
                anchor_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
                content_done: false,
                learners_done: 0,
                histories_done: 0,
                attempts: 0,
            }),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Learners handled between two checkpoints.
const CHUNK: u32 = 1_000;

pub async fn run(args: &DatasetArgs) -> anyhow::Result<()> {
    let spec = &args.spec;
    let clients = args.target.connect()?;
    let mut checkpoint = Checkpoint::load_or_start(&args.checkpoint, spec)?;
    let started = Instant::now();
    let concurrency = args.concurrency as usize;
    if !checkpoint.content_done {
        load_content(spec, &clients, concurrency, args.quiet).await?;
        checkpoint.content_done = true;
        checkpoint.save(&args.checkpoint)?;
    }
    let courses = spec.course_popularity();

    let bar = progress(args.quiet, "learners", spec.learners, checkpoint.learners_done);
    while checkpoint.learners_done < spec.learners {
        let chunk = checkpoint.learners_done..(checkpoint.learners_done + CHUNK).min(spec.learners);
        let size = chunk.len() as u32;
        futures::stream::iter(chunk)
            .map(|learner| create_learner(spec, &clients, learner, &courses))
            .buffer_unordered(concurrency)
            .inspect_ok(|()| bar.inc(1))
            .try_collect::<()>()
            .await?;
        checkpoint.learners_done += size;
        checkpoint.save(&args.checkpoint)?;
    }
    bar.finish();

    let bar = progress(args.quiet, "histories", spec.learners, checkpoint.histories_done);
    let window_start = checkpoint.anchor_ms - spec::HISTORY_DAYS * 86_400_000;
    while checkpoint.histories_done < spec.learners {
        let chunk = checkpoint.histories_done..(checkpoint.histories_done + CHUNK).min(spec.learners);
        let size = chunk.len() as u32;
        let attempts: u64 = futures::stream::iter(chunk)
            .map(|learner| submit_history(spec, &clients, learner, &courses, window_start))
            .buffer_unordered(concurrency)
            .inspect_ok(|_| bar.inc(1))
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await?;
        checkpoint.histories_done += size;
        checkpoint.attempts += attempts;
        checkpoint.save(&args.checkpoint)?;
    }
    bar.finish();
    tracing::info!(
        learners = spec.learners,
        items = spec.items,
        courses = spec.courses,
        attempts = checkpoint.attempts,
        seconds = started.elapsed().as_secs_f64(),
        "data set loaded"
    );
    Ok(())
}

fn progress(quiet: bool, what: &'static str, total: u32, done: u32) -> ProgressBar {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(u64::from(total)) };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:32}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what);
    bar.set_position(u64::from(done));
    bar
}

async fn load_content(spec: &DatasetSpec, clients: &Clients, concurrency: usize, quiet: bool) -> anyhow::Result<()> {
    let bar = progress(quiet, "items", spec.items, 0);
    for course in 0..spec.courses {
        let mut content = clients.content.clone();
        let created = retrying(|| {
            let mut content = content.clone();
            async move { content.create_course(CreateCourseRequest { course: Some(spec.course(course)) }).await }
        })
        .await;
        match created {
            Ok(_) => {}
            Err(status) if status.code() == Code::AlreadyExists => {}
            Err(status) => return Err(status).with_context(|| format!("creating {}", spec.course_id(course))),
        }
        let skills = spec.skills(course);
        content
            .upsert_skills(UpsertSkillsRequest { course_id: spec.course_id(course), skills })
            .await
            .with_context(|| format!("upserting the skills of {}", spec.course_id(course)))?;
    }
    let batches: Vec<(u32, std::ops::Range<u32>)> = (0..spec.courses)
        .flat_map(|course| {
            let n = spec.items_in(course);
            (0..n).step_by(500).map(move |start| (course, start..(start + 500).min(n)))
        })
        .collect();
    futures::stream::iter(batches)
        .map(|(course, range)| {
            let items: Vec<_> = range.map(|index| spec.item(course, index)).collect();
            let count = items.len() as u64;
            let content = clients.content.clone();
            let bar = &bar;
            async move {
                retrying(|| {
                    let mut content = content.clone();
                    let items = items.clone();
                    async move { content.upsert_items(UpsertItemsRequest { items }).await }
                })
                .await
                .with_context(|| format!("upserting items of {}", spec.course_id(course)))?;
                bar.inc(count);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency.min(4))
        .try_collect::<()>()
        .await?;
    bar.finish();
    Ok(())
}

async fn create_learner(spec: &DatasetSpec, clients: &Clients, learner: u32, courses: &Zipf) -> anyhow::Result<()> {
    let learner_id = spec.learner_id(learner);
    let profile = Learner {
        learner_id: learner_id.clone(),
        display_name: format!("Learner {learner}"),
        locale: if learner.is_multiple_of(5) { "de-DE" } else { "en-GB" }.to_owned(),
        desired_retention: if spec.persona(learner) == Persona::Power { 0.92 } else { 0.9 },
        ..Default::default()
    };
    let created = retrying(|| {
        let mut user = clients.user.clone();
        let learner = profile.clone();
        async move { user.create_learner(CreateLearnerRequest { learner: Some(learner) }).await }
    })
    .await;
    match created {
        Ok(_) => {}
        Err(status) if status.code() == Code::AlreadyExists => {}
        Err(status) => return Err(status).with_context(|| format!("creating {learner_id}")),
    }
    for course in spec.enrolments(learner, courses) {
        retrying(|| {
            let mut user = clients.user.clone();
            let request = EnrolLearnerRequest { learner_id: learner_id.clone(), course_id: spec.course_id(course) };
            async move { user.enrol_learner(request).await }
        })
        .await
        .with_context(|| format!("enrolling {learner_id} in {}", spec.course_id(course)))?;
    }
    Ok(())
}

/// Submits the learner's history in order; returns the attempts sent.
async fn submit_history(
    spec: &DatasetSpec,
    clients: &Clients,
    learner: u32,
    courses: &Zipf,
    window_start_ms: i64,
) -> anyhow::Result<u64> {
    let Some(&course) = spec.enrolments(learner, courses).first() else { return Ok(0) };
    let learner_id = spec.learner_id(learner);
    let history = spec.history(learner, course);
    for attempt in &history {
        let request = SubmitAttemptRequest {
            attempt_id: attempt.attempt_id.clone(),
            learner_id: learner_id.clone(),
            item_id: attempt.item_id.clone(),
            outcome: Some(submit_attempt_request::Outcome::Correct(attempt.correct)),
            response_time: Some(prost_types::Duration {
                seconds: attempt.response_ms / 1000,
                nanos: (attempt.response_ms % 1000) as i32 * 1_000_000,
            }),
            answer_time: Some(timestamp(window_start_ms + attempt.answer_offset_ms)),
            mock_test_id: String::new(),
        };
        retrying(|| {
            let mut scheduler = clients.scheduler.clone();
            let request = request.clone();
            async move { scheduler.submit_attempt(request).await }
        })
        .await
        .with_context(|| format!("submitting attempt {}", attempt.attempt_id))?;
    }
    Ok(history.len() as u64)
}

pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Retries a call the suite could not take just now (unavailable, shedding load, too slow), with
/// backoff, for up to about a minute.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if attempts < 12
                    && matches!(
                        status.code(),
                        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded
                    ) =>
            {
                attempts += 1;
                tracing::debug!(code = ?status.code(), message = status.message(), "retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(status) => return Err(status),
        }
    }
}
