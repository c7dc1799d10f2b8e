using System.Net.Sockets;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Connections;

/// <summary>
/// Kestrel's AppContext switch Microsoft.AspNetCore.Server.Kestrel.FinOnError: an abort ends with a FIN
/// instead of an RST. (Without it, TeardownTests shows the RST.) The switch is process-wide, so these run
/// alone.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class FinOnErrorTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public void The_options_take_the_switch_as_Kestrel_does()
    {
        Assert.False(new WinsockTransportOptions().FinOnError);
        AppContext.SetSwitch(WinsockTransportOptions.FinOnErrorSwitch, true);
        try
        {
            Assert.True(new WinsockTransportOptions().FinOnError);
        }
        finally
        {
            AppContext.SetSwitch(WinsockTransportOptions.FinOnErrorSwitch, false);
        }
    }

    [NotUnderWineFact(WinePlatform.ResetReadsAsEnd)]
    public async Task With_the_switch_an_abort_reaches_the_peer_as_a_fin()
    {
        AppContext.SetSwitch(WinsockTransportOptions.FinOnErrorSwitch, true);
        try
        {
            await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
            {
                var ct = TestContext.Current.CancellationToken;
                await context.Transport.Output.WriteAsync("partial"u8.ToArray(), ct);
                var read = await context.Transport.Input.ReadAsync(ct);
                context.Transport.Input.AdvanceTo(read.Buffer.End);
                context.Abort();
            });

            using var client = await RawClient.ConnectAsync(server.EndPoint);
            // The output first (an abort drops what is not sent yet, in Kestrel's transport too), then
            // the byte that makes the handler abort.
            var partial = new byte[7];
            Assert.Equal(7, await client.ReceiveAsync(partial, SocketFlags.None, TestContext.Current.CancellationToken));
            Assert.Equal("partial"u8.ToArray(), partial);
            await RawClient.SendAsync(client, "x");
            // A read of 0, not a reset.
            Assert.Empty(await RawClient.ReadToFinAsync(client, Timeout));
            var counters = server.Counters!;
            Assert.True(await Eventually.TrueAsync(() => counters.AbortiveCloses == 1, Timeout), Eventually.Describe(counters));
            Assert.Equal(0, counters.GracefulCloses);
            Assert.Equal(0, counters.ReuseDisconnects);
        }
        finally
        {
            AppContext.SetSwitch(WinsockTransportOptions.FinOnErrorSwitch, false);
        }
    }
}
