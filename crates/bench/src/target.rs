//! Where the suite under test listens, and one gRPC connection per service to it.

use std::time::Duration;

use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_runtime::client::lazy_channel;
use tonic::transport::Channel;

#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Scheduler service address.
    #[arg(long, env = "ALP_SCHEDULER_ADDR", default_value = "127.0.0.1:50051")]
    pub scheduler_addr: String,
    /// User service address.
    #[arg(long, env = "ALP_USER_ADDR", default_value = "127.0.0.1:50052")]
    pub user_addr: String,
    /// Content service address.
    #[arg(long, env = "ALP_CONTENT_ADDR", default_value = "127.0.0.1:50053")]
    pub content_addr: String,
}

/// Clients of the three public services over one connection each.
#[derive(Debug, Clone)]
pub struct Clients {
    pub scheduler: SchedulerServiceClient<Channel>,
    pub user: UserServiceClient<Channel>,
    pub content: ContentServiceClient<Channel>,
}

impl TargetArgs {
    /// One set of clients; each call opens its connections lazily.
    pub fn connect(&self) -> anyhow::Result<Clients> {
        let timeout = Duration::from_secs(2);
        Ok(Clients {
            scheduler: SchedulerServiceClient::new(lazy_channel("scheduler", &self.scheduler_addr, timeout)?),
            user: UserServiceClient::new(lazy_channel("user", &self.user_addr, timeout)?),
            content: ContentServiceClient::new(lazy_channel("content", &self.content_addr, timeout)?),
        })
    }
}
