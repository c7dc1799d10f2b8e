using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Listener;

namespace Transport.Tests.Listener;

/// <summary>
/// Accepts run ahead of the server only so far: a server that takes no connections (its thread pool
/// starved, say) leaves the rest of its clients in the listen backlog, as with Kestrel's Sockets
/// transport, instead of an ever longer queue of started connections each buffering what its client sends.
/// </summary>
public sealed class AcceptQueueTests
{
    private const string NoRing = "io_uring cannot run in this process (not Linux, or its probe failed).";
    private const int PendingAccepts = 4;
    private const int Clients = 40;

    public static bool IoUringRuns => Faults.DescriptorExhaustionTests.IoUringRuns;

    [Fact]
    public Task On_the_sockets_engine_a_server_that_takes_nothing_leaves_clients_in_the_backlog_and_loses_none()
        => LeavesClientsInTheBacklogAsync(WinsockEngine.Sockets);

    [Fact(Skip = NoRing, SkipUnless = nameof(IoUringRuns))]
    public Task On_io_uring_a_server_that_takes_nothing_leaves_clients_in_the_backlog_and_loses_none()
        => LeavesClientsInTheBacklogAsync(WinsockEngine.IoUring);

    private static async Task LeavesClientsInTheBacklogAsync(WinsockEngine engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var services = ListenerTests.BuildServices(options =>
        {
            options.Engine = engine;
            options.PendingAccepts = PendingAccepts;
            // One ring: its accept slots are the pending accepts (with more rings than that, one each).
            options.IoUringThreadCount = 1;
        });
        var counters = services.GetRequiredService<WinsockTransportCounters>();
        var listener = await ListenerTests.BindAsync(services);
        var clients = new List<Socket>();
        try
        {
            for (var i = 0; i < Clients; i++)
            {
                var client = await RawClient.ConnectAsync((IPEndPoint)listener.EndPoint);
                clients.Add(client);
                await RawClient.SendAsync(client, $"client {i:D2}\n");
            }

            // Nobody takes a connection: the accepts stop once the queue is full. Wait for them to settle.
            var bound = WinsockConnectionListener.QueueBound(new WinsockTransportOptions { PendingAccepts = PendingAccepts });
            // First the queue fills (a slot may be slow to run on a loaded machine), then nothing more comes.
            Assert.True(await Eventually.TrueAsync(() => counters.ConnectionsAccepted >= bound, TimeSpan.FromSeconds(10)), $"{counters.ConnectionsAccepted} accepted: the queue should have filled to {bound}");
            long accepted = -1;
            for (var quiet = 0; quiet < 10;)
            {
                await Task.Delay(50, ct);
                var now = counters.ConnectionsAccepted;
                quiet = now == accepted ? quiet + 1 : 0;
                accepted = now;
            }

            // The queue's bound, and the accepts that were posted when it filled.
            Assert.True(accepted >= bound, $"{accepted} accepted: the queue should have filled to {bound}");
            Assert.True(accepted <= bound + PendingAccepts, $"{accepted} of {Clients} clients accepted with the server taking none (queue bound {bound}, {PendingAccepts} pending accepts)");

            // Then the server takes them all: every client is served, in full.
            var seen = new HashSet<string>();
            for (var i = 0; i < Clients; i++)
            {
                var connection = await ListenerTests.AcceptAsync(listener);
                Assert.NotNull(connection);
                var line = await ReadLineAsync(connection, ct);
                seen.Add(line);
                // The client closes first, so that the server's close does not wait for its FIN.
                clients[int.Parse(line.AsSpan("client ".Length, 2), provider: null)].Shutdown(SocketShutdown.Send);
                await connection.Transport.Output.CompleteAsync();
                await connection.DisposeAsync();
            }

            Assert.Equal(Clients, seen.Count);
            Assert.Equal(Clients, counters.ConnectionsAccepted);
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }

            await listener.DisposeAsync();
        }
    }

    private static async Task<string> ReadLineAsync(ConnectionContext connection, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(TimeSpan.FromSeconds(10));
        while (true)
        {
            var result = await connection.Transport.Input.ReadAsync(cts.Token);
            var text = Encoding.ASCII.GetString(result.Buffer);
            if (text.EndsWith('\n') || result.IsCompleted)
            {
                connection.Transport.Input.AdvanceTo(result.Buffer.End);
                return text;
            }

            connection.Transport.Input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        }
    }
}
