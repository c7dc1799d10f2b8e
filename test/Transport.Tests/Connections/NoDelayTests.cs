using System.Net.Sockets;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Connections;
using Transport.Winsock.Engines.Sockets;

namespace Transport.Tests.Connections;

/// <summary>
/// NoDelay reaches every accepted socket, new or recycled: on Windows the transport sets it on every
/// accept, as Kestrel does; elsewhere accepted sockets inherit it from the listening socket.
/// </summary>
public sealed class NoDelayTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Every_accepted_socket_has_the_configured_NoDelay(bool noDelay)
    {
        var seen = new System.Collections.Concurrent.ConcurrentQueue<bool>();
        await using var server = await ConnectionServer.StartAsync(
            TransportKind.Winsock,
            async connection =>
            {
                seen.Enqueue(((SocketConnectionIo)((WinsockConnection)connection).Io).Socket.NoDelay);
                // The client closes first (a passive close), so that the socket recycles.
                await TeardownTests.ReadToEndAsync(connection.Transport.Input);
                await connection.Transport.Output.CompleteAsync();
            },
            options =>
            {
                options.NoDelay = noDelay;
                options.PendingAccepts = 1;
                options.ReuseSockets = ReusePlatform.ForcedWhereItWorks;
            });

        var counters = server.Counters!;
        for (var i = 0; i < 8; i++)
        {
            using (var client = await RawClient.ConnectAsync(server.EndPoint))
            {
                client.Shutdown(SocketShutdown.Send);
                await RawClient.ReadToFinAsync(client, TimeSpan.FromSeconds(10));
            }

            // Let this connection's socket finish its recycle before the next accept completes, so the
            // slot's repost after that accept finds it in the pool: recycled sockets are then certain.
            var ended = i + 1;
            Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses == ended && counters.PendingDisconnects == 0, TimeSpan.FromSeconds(10)), Eventually.Describe(counters));
        }

        Assert.True(await Eventually.TrueAsync(() => seen.Count == 8, TimeSpan.FromSeconds(10)), $"{seen.Count} connections seen");
        Assert.All(seen, value => Assert.Equal(noDelay, value));
        // The later connections ran on recycled sockets where reuse works.
        Assert.True(WinePlatform.IsWine || counters.SocketsReused > 0, Eventually.Describe(counters));
    }
}
