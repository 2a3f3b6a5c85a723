// Empty library target: lets mmap-trace list this crate as a build-dependency so cargo
// rebuilds the loader when the programs change (the aya-template arrangement).
#![no_std]
