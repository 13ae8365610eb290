/* Force-included (gcc -include) into every C++ translation unit and the host code of every CUDA one in
 * the release build (scripts/build-release.sh), which compiles against glibc 2.31 (Debian 11) and must
 * load on glibc 2.28 and newer.
 *
 * A call to a glibc function records that function's newest symbol version in the glibc built
 * against. glibc 2.29 gave exp, exp2, log, log2 and pow new versions that only drop a wrapper for the
 * SVID error handling (matherr) glibc no longer offers to new programs: both versions compute with the
 * same code in any one glibc. Binding calls to the versions every x86-64 glibc has keeps the binary's
 * need at 2.28. Functions that first appeared after 2.28 have no older version to bind to:
 * scripts/glibc-ceiling.sh (run by the release build and the packaging test) fails on them. */
#if defined(__x86_64__) && defined(__linux__) && !defined(__CUDA_ARCH__)
__asm__(".symver exp,exp@GLIBC_2.2.5");
__asm__(".symver exp2,exp2@GLIBC_2.2.5");
__asm__(".symver log,log@GLIBC_2.2.5");
__asm__(".symver log2,log2@GLIBC_2.2.5");
__asm__(".symver pow,pow@GLIBC_2.2.5");
#endif
