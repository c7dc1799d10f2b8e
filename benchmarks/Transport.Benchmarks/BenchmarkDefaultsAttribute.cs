using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

[assembly: Transport.Benchmarks.BenchmarkDefaults]

namespace Transport.Benchmarks;

/// <summary>
/// Applied to every job of this assembly, including one chosen on the command line (<c>--job Dry</c>):
/// <list type="bullet">
/// <item>In process (<see cref="InProcessEmitToolchain"/>): BenchmarkDotNet's default toolchain generates
/// and builds a project next to this one, which it finds by listing every file under the repository
/// root; that fails here once <c>build/test.sh</c> has made its Wine prefix (artifacts/wine, whose
/// <c>z:</c> drive links to <c>/</c>), and its build would also write into src/'s bin and obj folders.
/// In process, nothing is built and the Allocated column (all threads' allocations,
/// <c>GC.GetTotalAllocatedBytes</c>) is measured the same way.</item>
/// <item>5 warmup and 10 measured iterations, so that all of it runs in a few minutes on 2 cores.</item>
/// </list>
/// A job mutator, not a job: a job attribute would run beside <c>--job</c> rather than shape it.
/// </summary>
[AttributeUsage(AttributeTargets.Assembly)]
public sealed class BenchmarkDefaultsAttribute : JobMutatorConfigBaseAttribute
{
    public BenchmarkDefaultsAttribute()
        : base(Job.Default
            .WithToolchain(InProcessEmitToolchain.Instance)
            .WithWarmupCount(5)
            .WithIterationCount(10))
    {
    }
}
