//! Per-node network namespaces joined by a switch whose every link can be
//! cut, delayed, made lossy or duplicated.
