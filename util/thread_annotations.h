// Clang's thread-safety analysis (-Wthread-safety), as LevelDB's
// port/thread_annotations.h spells it. Under clang the lock rules written
// with these are checked at compile time (the top-level meson.build turns
// the warnings into errors); under gcc they compile to nothing.
//
// GUARDED_BY(mu)       a field read or written only with mu held
// REQUIRES(mu)         a function called with mu held (…_SHARED: at least shared)
// EXCLUDES(mu)         a function called without mu (it takes mu itself)
// ACQUIRE/RELEASE      a function that takes or gives up mu
// ACQUIRED_BEFORE      the lock order, written once at the declaration
#pragma once

#if defined(__clang__)
#define NASFS_TSA(x) __attribute__((x))
#else
#define NASFS_TSA(x)
#endif

#define CAPABILITY(x) NASFS_TSA(capability(x))
#define SCOPED_CAPABILITY NASFS_TSA(scoped_lockable)
#define GUARDED_BY(x) NASFS_TSA(guarded_by(x))
#define PT_GUARDED_BY(x) NASFS_TSA(pt_guarded_by(x))
#define ACQUIRED_BEFORE(...) NASFS_TSA(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) NASFS_TSA(acquired_after(__VA_ARGS__))
#define REQUIRES(...) NASFS_TSA(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) NASFS_TSA(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...) NASFS_TSA(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) NASFS_TSA(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) NASFS_TSA(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) NASFS_TSA(release_shared_capability(__VA_ARGS__))
#define RELEASE_GENERIC(...) NASFS_TSA(release_generic_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) NASFS_TSA(try_acquire_capability(__VA_ARGS__))
#define TRY_ACQUIRE_SHARED(...) NASFS_TSA(try_acquire_shared_capability(__VA_ARGS__))
#define EXCLUDES(...) NASFS_TSA(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) NASFS_TSA(assert_capability(x))
#define RETURN_CAPABILITY(x) NASFS_TSA(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS NASFS_TSA(no_thread_safety_analysis)
