using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Connections;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// A ring's completions can never exceed its completion queue, so the kernel never needs an overflow
/// entry (whose failed allocation is a dropped completion): the queue is chosen from the descriptor limit,
/// large enough for three operations a descriptor, and where the limit is beyond what the largest queue
/// covers, a full ring pauses accepting until a connection ends. A full ring is a seam
/// (<see cref="RingCapacity.MaxInFlightFault"/>): filling a real 65536-entry queue would take some 32000
/// connections, more than this machine's descriptor limit.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class RingCapacityTests
{
    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    [Theory]
    [InlineData(1024L, 8, 8192u)]
    [InlineData(20000L, 8, 65536u)]
    [InlineData(16L, 1, 4096u)]
    public void The_queue_chosen_from_the_descriptor_limit_has_room_for_every_descriptor_as_a_connection_with_a_FIN(long limit, int accepts, uint expected)
    {
        var entries = RingCapacity.ChooseCqEntries(limit, accepts);
        Assert.Equal(expected, entries);
        // With every descriptor a connection of this ring and a FIN in flight for each, another accept still fits.
        Assert.True(RingCapacity.HasRoom(connections: (int)limit, finsInFlight: (int)limit, accepts, RingCapacity.MaxInFlight(entries)));
    }

    [Fact]
    public void Past_what_the_largest_queue_covers_the_ring_is_bounded_instead()
    {
        var entries = RingCapacity.ChooseCqEntries(1_048_576, 8);
        Assert.Equal(65536u, entries);
        var max = RingCapacity.MaxInFlight(entries);
        Assert.True(RingCapacity.HasRoom(20_000, 0, 8, max));
        Assert.False(RingCapacity.HasRoom(40_000, 0, 8, max));
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public async Task A_ring_gets_the_queue_its_descriptor_limit_calls_for()
    {
        var thread = RingThread.TryStart("io_uring capacity test", Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, out var failure);
        Assert.True(thread is not null, $"no ring: {failure}");
        try
        {
            TestContext.Current.SendDiagnosticMessage($"descriptor limit {RingCapacity.DescriptorLimit()}: {thread.CqEntries} completion queue entries");
            Assert.Equal(RingCapacity.ChooseCqEntries(RingCapacity.DescriptorLimit(), 1), thread.CqEntries);
        }
        finally
        {
            await thread.StopAsync();
        }
    }

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public async Task A_full_ring_pauses_accepting_until_one_of_its_connections_ends()
    {
        var log = new CapturedLog();
        var rings = new System.Collections.Concurrent.ConcurrentDictionary<RingThread, bool>();
        // One accept on one ring: with room for 5 operations in flight, two connections fit (RingCapacity.HasRoom).
        RingCapacity.MaxInFlightFault = 5;
        try
        {
            await using var server = await ConnectionServer.StartAsync(
                TransportKind.Winsock,
                async context =>
                {
                    rings.TryAdd(((IoUringConnectionIo)((WinsockConnection)context).Io).Ring, true);
                    await EchoUntilFinAsync(context);
                },
                static options =>
                {
                    options.Engine = WinsockEngine.IoUring;
                    options.IoUringThreadCount = 1;
                    options.PendingAccepts = 1;
                },
                builder => builder.Logging.AddProvider(log).AddFilter<CapturedLog>("Transport.Winsock", LogLevel.Trace));
            using var first = await RawClient.ConnectAsync(server.EndPoint);
            await EchoAsync(first, "first");
            using var second = await RawClient.ConnectAsync(server.EndPoint);
            await EchoAsync(second, "second");

            // The kernel completes the third handshake (the backlog), but the ring takes no more.
            using var third = await RawClient.ConnectAsync(server.EndPoint);
            await third.SendAsync("third"u8.ToArray(), SocketFlags.None, TestContext.Current.CancellationToken);
            await Task.Delay(1000, TestContext.Current.CancellationToken);
            Assert.Equal(0, third.Available);
            var ring = Assert.Single(rings.Keys);
            Assert.Equal(2, ring.Connections);
            var paused = Assert.Single(log.Entries, e => e.EventId.Name == "AcceptPaused");
            Assert.Equal(LogLevel.Warning, paused.Level);
            Assert.Contains("completion queue", paused.Message, StringComparison.Ordinal);

            // One ends: the third is accepted and served.
            first.Dispose();
            await ReadEchoAsync(third, "third");
            Assert.True(ring.Connections <= 2, $"{ring.Connections} connections on a ring with room for 2");
        }
        finally
        {
            RingCapacity.MaxInFlightFault = null;
        }
    }

    private static async Task EchoUntilFinAsync(ConnectionContext context)
    {
        while (true)
        {
            var result = await context.Transport.Input.ReadAsync();
            foreach (var segment in result.Buffer)
            {
                await context.Transport.Output.WriteAsync(segment);
            }

            context.Transport.Input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return;
            }
        }
    }

    private static async Task EchoAsync(Socket socket, string text)
    {
        await socket.SendAsync(Encoding.ASCII.GetBytes(text), SocketFlags.None, TestContext.Current.CancellationToken);
        await ReadEchoAsync(socket, text);
    }

    private static async Task ReadEchoAsync(Socket socket, string text)
    {
        var received = new byte[text.Length];
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        var read = 0;
        while (read < received.Length)
        {
            var n = await socket.ReceiveAsync(received.AsMemory(read), SocketFlags.None, timeout.Token);
            Assert.True(n > 0, $"the server ended the connection after {read} bytes of \"{text}\"");
            read += n;
        }

        Assert.Equal(text, Encoding.ASCII.GetString(received));
    }
}
