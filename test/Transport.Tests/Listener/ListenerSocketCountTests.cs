using System.Net;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Microsoft.Extensions.DependencyInjection;

namespace Transport.Tests.Listener;

/// <summary>A disposed listener leaves no socket behind: not the listening socket, posted accepts, or pooled sockets.</summary>
[Collection(nameof(ProcessWideTests))]
public sealed class ListenerSocketCountTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Theory(Skip = ProcessSockets.Unsupported, SkipUnless = nameof(ProcessSockets.IsSupported), SkipType = typeof(ProcessSockets))]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Disposing_the_listener_closes_every_socket_it_owns(bool reuse)
    {
        var ct = TestContext.Current.CancellationToken;
        var baseline = ProcessSockets.Count();
        await using (var services = ListenerTests.BuildServices(options =>
        {
            options.PendingAccepts = 4;
            options.ReuseSockets = reuse;
        }))
        {
            var counters = services.GetRequiredService<WinsockTransportCounters>();
            var listener = await ListenerTests.BindAsync(services);
            for (var i = 0; i < 3; i++)
            {
                var client = await RawClient.ConnectAsync((IPEndPoint)listener.EndPoint);
                var connection = await ListenerTests.AcceptAsync(listener);
                Assert.NotNull(connection);
                // The client closes first, so that with reuse the socket recycles into the pool.
                client.Shutdown(System.Net.Sockets.SocketShutdown.Send);
                await Connections.TeardownTests.ReadToEndAsync(connection.Transport.Input);
                await connection.Transport.Output.WriteAsync("bye"u8.ToArray(), ct);
                await connection.Transport.Output.CompleteAsync();
                Assert.Equal("bye"u8.ToArray(), await RawClient.ReadToFinAsync(client, Timeout));
                client.Dispose();
                await connection.DisposeAsync().AsTask().WaitAsync(Timeout, ct);
            }

            // The listening socket and, with reuse, the posted accepts' and recycled sockets are open now.
            Assert.True(await Eventually.TrueAsync(() => counters.PooledSockets >= (reuse ? 1 : 0) && counters.GracefulCloses == 3, Timeout), Eventually.Describe(counters));
            Assert.True(ProcessSockets.Count() > baseline, $"no sockets open beyond the baseline {baseline} while listening");

            await listener.DisposeAsync().AsTask().WaitAsync(Timeout, ct);
            Assert.Equal(0, counters.PooledSockets);
            Assert.Equal(0, counters.PendingDisconnects);
        }

        var after = await ProcessSockets.WaitForAtMostAsync(baseline, Timeout);
        Assert.True(after <= baseline, $"{after} sockets open after dispose; {baseline} before the listener");
    }
}
