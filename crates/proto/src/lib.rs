//! ALP's gRPC contract, generated from `proto/` at build time.

#![allow(clippy::all, missing_docs)]

pub mod common {
    pub mod v1 {
        tonic::include_proto!("alp.common.v1");
    }
}

pub mod content {
    pub mod v1 {
        tonic::include_proto!("alp.content.v1");
    }
}

pub mod user {
    pub mod v1 {
        tonic::include_proto!("alp.user.v1");
    }
}

pub mod scoring {
    pub mod v1 {
        tonic::include_proto!("alp.scoring.v1");
    }
}

pub mod scheduler {
    pub mod v1 {
        tonic::include_proto!("alp.scheduler.v1");
    }
}

/// Encoded `FileDescriptorSet` of every ALP proto and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/alp_descriptor.bin"));
