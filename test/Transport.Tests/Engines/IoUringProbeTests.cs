using System.Diagnostics;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// The io_uring probe decides at startup whether the engine can run, so it must always come back with a
/// verdict, and soon: where a ring sets up but an operation never completes (a sandbox or an LSM that holds
/// network operations), it fails naming that operation instead of hanging the listener's bind. The
/// withheld completion is a seam (the probe's own client never connects, never sends, or the eventfd is never written), as no kernel here holds an
/// accept on demand.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class IoUringProbeTests
{
    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    [Theory(Skip = "io_uring cannot run in this process (not Linux, or the probe failed), so no operation of a passing probe can be withheld.", SkipUnless = nameof(IoUringRuns))]
    [InlineData("IORING_OP_ACCEPT")]
    [InlineData("IORING_OP_POLL_ADD")]
    [InlineData("IORING_OP_READ")]
    public async Task An_operation_that_never_completes_fails_the_probe_within_a_bound_naming_it(string op)
    {
        // The process's verdict is taken first, so that the fault never becomes the cached one.
        _ = IoUringProbe.Result;
        IoUringProbe.WithholdFault = op;
        try
        {
            var watch = Stopwatch.StartNew();
            var probe = await Task.Run(IoUringProbe.Run, TestContext.Current.CancellationToken)
                .WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
            TestContext.Current.SendDiagnosticMessage($"{watch.Elapsed.TotalSeconds:F1} s: {probe.Reason}");
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"the probe took {watch.Elapsed}");
            Assert.False(probe.Passed);
            Assert.StartsWith($"{op} did not complete within 2 s", probe.Reason, StringComparison.Ordinal);
        }
        finally
        {
            IoUringProbe.WithholdFault = null;
        }
    }
}
