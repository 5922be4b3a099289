//! Host networking for Flynn jobs (work in progress).
