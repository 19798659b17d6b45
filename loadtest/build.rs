// The switch's build script (one copy): records the git commit for the
// reports' build info.
include!("../build.rs");
