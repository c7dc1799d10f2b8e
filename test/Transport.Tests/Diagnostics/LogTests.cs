using System.Net;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Diagnostics;

/// <summary>As quiet as Kestrel's own transports: nothing above Debug in normal operation.</summary>
public sealed class LogTests
{
    [Fact]
    public async Task Normal_operation_logs_nothing_above_Debug()
    {
        var log = new CapturedLog();
        await using (var server = await SampleServer.StartAsync(
            configure: options => options.DeferFinTimeout = TimeSpan.FromMilliseconds(500),
            configureBuilder: builder => builder.Logging.AddProvider(log).AddFilter<CapturedLog>("Transport.Winsock", LogLevel.Trace)))
        {
            // Connection: close both ways round (HttpClient closes first, raw clients wait out the deferral),
            // one keep-alive connection, and a client that resets: 26 connections.
            await server.GetPlaintextOnNewConnectionsAsync(20);
            await RawHttp.GetPlaintextAsync(new IPEndPoint(IPAddress.Loopback, server.Port), 4, clientClosesFirst: false);
            using (var client = server.CreateKeepAliveClient(maxConnections: 1))
            {
                for (var i = 0; i < 20; i++)
                {
                    await client.GetByteArrayAsync("/plaintext", TestContext.Current.CancellationToken);
                }
            }

            using (var reset = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port)))
            {
                await RawClient.SendAsync(reset, "GET /plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n");
                RawClient.Reset(reset);
            }

            Assert.True(await Eventually.TrueAsync(() => server.Counters.GracefulCloses + server.Counters.ConnectionResets == 26, TimeSpan.FromSeconds(10)), Eventually.Describe(server.Counters));
        }

        Assert.NotEmpty(log.Entries);
        var loud = log.Entries.Where(e => e.Level > LogLevel.Debug).ToList();
        if (WinePlatform.IsWine)
        {
            // Wine claims socket reuse and fails the self-test: that one warning is the point.
            Assert.Equal("ReuseOff", Assert.Single(loud).EventId.Name);
        }
        else
        {
            Assert.True(loud.Count == 0, string.Join(" | ", loud.Select(e => $"{e.Level} {e.EventId.Name}: {e.Message}")));
        }
    }
}
