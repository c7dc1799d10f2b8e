using System.Net.Sockets;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Teardown;

namespace Transport.Tests.Teardown;

/// <summary>
/// The outbound reuse self-test's second connect, the recycled socket's, on the 4-tuple loopback's server
/// holds in TIME_WAIT where the socket kept its port: a stall there is what a dropped SYN costs, and fails
/// the test. It is run past the emulation check (on Linux .NET only emulates reuse, and the test would
/// stop there), with a delay put into that connect.
/// </summary>
public sealed class ReuseSelfTestTests
{
    private static readonly ReuseSelfTest.ListenerKind IPv4 = new(AddressFamily.InterNetwork, false);

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task A_recycled_connect_that_stalls_fails_the_outbound_self_test()
    {
        // Longer than the stall the test allows, well within its 5 s budget.
        var stall = ReuseSelfTest.SecondConnectStall + TimeSpan.FromMilliseconds(500);
        Assert.True(stall < ReuseSelfTest.Timeout);

        var verdict = await ReuseSelfTest.RunConnectWithDelayForTestsAsync(IPv4, stall).WaitAsync(TestContext.Current.CancellationToken);

        Assert.NotNull(verdict.Refusal);
        Assert.StartsWith("the outbound reuse self-test (IPv4) failed: connecting the recycled socket took ", verdict.Refusal, StringComparison.Ordinal);
        Assert.False(verdict.Emulated);
    }
}
