using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using KestrelApp;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Connections;
using Transport.Winsock.Engines.Sockets;
using Transport.Winsock.Teardown;

namespace Transport.Tests.Options;

/// <summary>The options a user of Kestrel's Sockets transport sets, with its names and meanings, doing what they say here.</summary>
public sealed class SocketsTransportOptionsTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task CreateBoundListenSocket_makes_the_listening_socket()
    {
        var made = new List<EndPoint>();
        await using var server = await SampleServer.StartAsync(configure: options => options.CreateBoundListenSocket = endPoint =>
        {
            made.Add(endPoint);
            var socket = WinsockTransportOptions.CreateDefaultBoundListenSocket(endPoint);
            socket.ReceiveBufferSize = 128 * 1024;
            return socket;
        });

        await server.GetPlaintextOnNewConnectionsAsync(3);
        var endPoint = Assert.IsType<IPEndPoint>(Assert.Single(made));
        Assert.Equal(IPAddress.Loopback, endPoint.Address);
        Assert.Equal(3, server.Counters.ConnectionsAccepted);
    }

    [Theory]
    [InlineData("unbound")]
    [InlineData("udp")]
    public async Task CreateBoundListenSocket_returning_an_unusable_socket_fails_startup_naming_the_option(string kind)
    {
        var returned = new List<Socket>();
        var builder = SampleHost.CreateBuilder(["--urls", "http://127.0.0.1:0"], options => options.CreateBoundListenSocket = endPoint =>
        {
            var socket = kind == "udp"
                ? new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
                : new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            if (kind == "udp")
            {
                socket.Bind(endPoint);
            }

            returned.Add(socket);
            return socket;
        });
        builder.Logging.ClearProviders();
        await using var app = builder.Build();

        var ex = await Assert.ThrowsAnyAsync<Exception>(() => app.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("WinsockTransportOptions.CreateBoundListenSocket must return a bound TCP stream socket", ex.ToString(), StringComparison.Ordinal);
        // What it returned was closed.
        Assert.Throws<ObjectDisposedException>(() => Assert.Single(returned).Available);
    }

    [Fact]
    public void CreateDefaultBoundListenSocket_binds_and_makes_the_IPv6_any_address_dual_mode()
    {
        using (var socket = WinsockTransportOptions.CreateDefaultBoundListenSocket(new IPEndPoint(IPAddress.Loopback, 0)))
        {
            Assert.True(socket.IsBound);
            Assert.Equal(ProtocolType.Tcp, socket.ProtocolType);
        }

        if (Ipv6Loopback.IsAvailable)
        {
            // Bound only, never listening: it takes no connection from anywhere.
            using var any = WinsockTransportOptions.CreateDefaultBoundListenSocket(new IPEndPoint(IPAddress.IPv6Any, 0));
            Assert.True(any.DualMode);
        }

        Assert.Throws<NotSupportedException>(() => WinsockTransportOptions.CreateDefaultBoundListenSocket(new NamedPipeEndPoint("winsock-test")));
    }

    [Theory]
    [InlineData(0, false)]
    [InlineData(1, false)]
    [InlineData(3, false)]
    [InlineData(3, true)]
    public void IOQueueCount_and_UnsafePreferInlineScheduling_decide_the_pipes_schedulers(int queues, bool inline)
    {
        var factory = Factory(new WinsockTransportOptions { IOQueueCount = queues, UnsafePreferInlineScheduling = inline });
        var seen = Enumerable.Range(0, 12).Select(_ => factory.NextPipeOptions()).ToList();

        foreach (var (input, output) in seen)
        {
            // The application's side: the thread pool, or inline.
            Assert.Same(inline ? PipeScheduler.Inline : PipeScheduler.ThreadPool, input.ReaderScheduler);
            Assert.Same(input.ReaderScheduler, output.WriterScheduler);
            // The transport's side, shared by a connection's two pipes.
            Assert.Same(input.WriterScheduler, output.ReaderScheduler);
        }

        var transport = seen.Select(p => p.Input.WriterScheduler).Distinct().ToList();
        if (inline)
        {
            Assert.Same(PipeScheduler.Inline, Assert.Single(transport));
        }
        else if (queues == 0)
        {
            Assert.Same(PipeScheduler.ThreadPool, Assert.Single(transport));
        }
        else
        {
            // One I/O queue each, taken in turn.
            Assert.Equal(queues, transport.Count);
            Assert.All(transport, scheduler => Assert.IsType<BatchingScheduler>(scheduler));
        }
    }

    [Fact]
    public void IOQueueCount_defaults_as_in_Kestrel()
    {
        var processors = Environment.ProcessorCount;
        var expected = OperatingSystem.IsWindows() || processors <= 32 ? Math.Min(processors, 16) : processors / 2;
        Assert.Equal(expected, new WinsockTransportOptions().IOQueueCount);
        Assert.True(new WinsockTransportOptions().WaitForDataBeforeAllocatingBuffer);
        Assert.False(new WinsockTransportOptions().UnsafePreferInlineScheduling);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task WaitForDataBeforeAllocatingBuffer_decides_whether_an_idle_connection_holds_a_buffer(bool waitForData)
    {
        const int Idle = 8;
        var pool = new CountingPool();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddSingleton<IMemoryPoolFactory<byte>>(pool);
        services.AddWinsockReuseTransport(options => options.WaitForDataBeforeAllocatingBuffer = waitForData);
        await using var provider = services.BuildServiceProvider();
        await using var listener = await Listener.ListenerTests.BindAsync(provider);

        var clients = new List<Socket>();
        var connections = new List<ConnectionContext>();
        try
        {
            for (var i = 0; i < Idle; i++)
            {
                clients.Add(await RawClient.ConnectAsync((IPEndPoint)listener.EndPoint));
                connections.Add((await Listener.ListenerTests.AcceptAsync(listener))!);
            }

            // Connected, nothing sent: each receive loop is posted and waits.
            var expected = waitForData ? 0 : Idle;
            Assert.True(await Eventually.TrueAsync(() => pool.Outstanding == expected, Timeout), $"{pool.Outstanding} blocks rented by {Idle} idle connections");

            // Data still arrives either way.
            await RawClient.SendAsync(clients[0], "ping");
            var read = await connections[0].Transport.Input.ReadAtLeastAsync(4, TestContext.Current.CancellationToken);
            Assert.Equal("ping"u8.ToArray(), read.Buffer.ToArray());
            connections[0].Transport.Input.AdvanceTo(read.Buffer.End);
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }

            foreach (var connection in connections)
            {
                await connection.DisposeAsync();
            }
        }
    }

    private static WinsockConnectionFactory Factory(WinsockTransportOptions options)
    {
        var counters = new WinsockTransportCounters();
        var pool = new SocketPool(4, counters);
        var recycler = new SocketRecycler(pool, options, new ReuseDecision(false, false, "off: test"), new IPEndPoint(IPAddress.Loopback, 0), counters, NullLogger.Instance);
        return new WinsockConnectionFactory(new IPEndPoint(IPAddress.Loopback, 0), MemoryPool<byte>.Shared, options, () => new SocketConnectionIo(recycler, inlineContinuations: false), counters, NullLogger.Instance);
    }

    /// <summary>A memory pool, handed to the transport the way Kestrel's is, that counts the blocks out.</summary>
    private sealed class CountingPool : MemoryPool<byte>, IMemoryPoolFactory<byte>
    {
        private int _outstanding;

        public int Outstanding => Volatile.Read(ref _outstanding);

        public override int MaxBufferSize => 4096;

        public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => this;

        public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
        {
            Interlocked.Increment(ref _outstanding);
            return new Block(this, new byte[MaxBufferSize]);
        }

        protected override void Dispose(bool disposing)
        {
        }

        private sealed class Block(CountingPool pool, byte[] array) : IMemoryOwner<byte>
        {
            private int _disposed;

            public Memory<byte> Memory => array;

            public void Dispose()
            {
                if (Interlocked.Exchange(ref _disposed, 1) == 0)
                {
                    Interlocked.Decrement(ref pool._outstanding);
                }
            }
        }
    }
}
