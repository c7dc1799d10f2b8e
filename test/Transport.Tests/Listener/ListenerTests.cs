using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Listener;

/// <summary>The transport as Kestrel drives it: an <see cref="IConnectionListenerFactory"/>, used directly.</summary>
public sealed class ListenerTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Factory_binds_ip_endpoints_only()
    {
        await using var services = BuildServices();
        var selector = Ours(services);

        Assert.True(selector.CanBind(new IPEndPoint(IPAddress.Loopback, 0)));
        Assert.True(selector.CanBind(new IPEndPoint(IPAddress.IPv6Any, 8080)));
        Assert.False(selector.CanBind(new NamedPipeEndPoint("winsock-test")));
        Assert.False(selector.CanBind(new FileHandleEndPoint(42, FileHandleType.Tcp)));
    }

    [NotUnderWineFact(WinePlatform.NoUnixSockets)]
    public async Task Factory_leaves_unix_domain_socket_endpoints_to_other_transports()
    {
        await using var services = BuildServices();
        var selector = Ours(services);
        Assert.False(selector.CanBind(new UnixDomainSocketEndPoint(Path.Combine(Path.GetTempPath(), "winsock-test.sock"))));
    }

    [Fact]
    public async Task Bound_listener_accepts_a_connection_that_carries_bytes_both_ways()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var services = BuildServices();
        await using var listener = await BindAsync(services);
        var endPoint = Assert.IsType<IPEndPoint>(listener.EndPoint);
        Assert.Equal(IPAddress.Loopback, endPoint.Address);
        Assert.NotEqual(0, endPoint.Port);

        using var client = await RawClient.ConnectAsync(endPoint);
        await using var connection = await AcceptAsync(listener);
        Assert.NotNull(connection);
        Assert.Equal(client.LocalEndPoint, connection.RemoteEndPoint);

        await RawClient.SendAsync(client, "ping");
        var input = connection.Transport.Input;
        var request = await input.ReadAtLeastAsync(4, ct);
        Assert.Equal("ping", Encoding.ASCII.GetString(request.Buffer));
        input.AdvanceTo(request.Buffer.End);

        await connection.Transport.Output.WriteAsync("pong"u8.ToArray(), ct);
        await connection.Transport.Output.CompleteAsync();
        Assert.Equal("pong", Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(client, Timeout)));

        client.Shutdown(SocketShutdown.Send);
        var end = await input.ReadAsync(ct);
        Assert.True(end.IsCompleted);
        Assert.True(end.Buffer.IsEmpty);
        input.AdvanceTo(end.Buffer.End);
        Assert.Equal(1, services.GetRequiredService<WinsockTransportCounters>().ConnectionsAccepted);
    }

    [Fact]
    public async Task Unbind_before_any_accept_makes_AcceptAsync_return_null_and_refuses_new_connections()
    {
        await using var services = BuildServices();
        var listener = await BindAsync(services);
        var endPoint = (IPEndPoint)listener.EndPoint;

        await listener.UnbindAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Null(await AcceptAsync(listener));

        var refused = await Assert.ThrowsAsync<SocketException>(async () => (await RawClient.ConnectAsync(endPoint)).Dispose());
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);

        await listener.DisposeAsync();
        // A second dispose is a no-op.
        await listener.DisposeAsync();
        Assert.Equal(0, services.GetRequiredService<WinsockTransportCounters>().ConnectionsAccepted);
    }

    [Fact]
    public async Task Dispose_twice_after_serving_is_fine()
    {
        await using var services = BuildServices();
        var listener = await BindAsync(services);
        var client = await RawClient.ConnectAsync((IPEndPoint)listener.EndPoint);
        var connection = await AcceptAsync(listener);
        Assert.NotNull(connection);
        // The client leaves first, so the connection's end is a clean FIN both ways.
        client.Dispose();
        await connection.DisposeAsync().AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);

        await listener.DisposeAsync().AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        await listener.DisposeAsync().AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Null(await AcceptAsync(listener));
    }

    public enum Composition
    {
        /// <summary>WebApplication.CreateSlimBuilder, then UseWinsockReuseTransport: Kestrel registered first.</summary>
        WebApplication,

        /// <summary>A host that composes services itself: AddWinsockReuseTransport, then UseKestrelCore.</summary>
        OursBeforeKestrelCore,

        /// <summary>The same host the other way round: UseKestrelCore, then AddWinsockReuseTransport.</summary>
        KestrelCoreBeforeOurs,
    }

    [Theory(Skip = WinePlatform.NoUnixSockets, SkipWhen = nameof(WinePlatform.IsWine), SkipType = typeof(WinePlatform))]
    [InlineData(Composition.WebApplication)]
    [InlineData(Composition.OursBeforeKestrelCore)]
    [InlineData(Composition.KestrelCoreBeforeOurs)]
    public async Task In_a_host_unix_socket_endpoints_fall_through_to_kestrels_transport_while_tcp_uses_ours(Composition composition)
    {
        var ct = TestContext.Current.CancellationToken;
        var path = Path.Combine(Path.GetTempPath(), $"winsock-{Guid.NewGuid():N}.sock");
        var served = new ConcurrentQueue<Type>();
        void Listen(Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions kestrel)
        {
            kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Run(HelloAsync));
            kestrel.ListenUnixSocket(path, listen => listen.Run(HelloAsync));
        }

        IHost app;
        if (composition == Composition.WebApplication)
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.UseWinsockReuseTransport();
            builder.WebHost.UseKestrel(Listen);
            app = builder.Build();
        }
        else
        {
            app = new HostBuilder().ConfigureWebHost(web =>
            {
                if (composition == Composition.OursBeforeKestrelCore)
                {
                    web.ConfigureServices(services => services.AddWinsockReuseTransport());
                }

                web.UseKestrelCore().ConfigureKestrel(Listen);
                if (composition == Composition.KestrelCoreBeforeOurs)
                {
                    web.ConfigureServices(services => services.AddWinsockReuseTransport());
                }

                web.Configure(static _ => { });
            }).Build();
        }

        using (app)
        {
            await app.StartAsync(ct);
            try
            {
                var counters = app.Services.GetRequiredService<WinsockTransportCounters>();
                using (var uds = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
                {
                    await uds.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
                    Assert.Equal("hello", Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(uds, Timeout)));
                }

                Assert.Equal(0, counters.ConnectionsAccepted);
                Assert.DoesNotContain(typeof(WinsockTransportCounters).Assembly, served.Select(t => t.Assembly));

                var addresses = app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>().Features
                    .GetRequiredFeature<Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature>().Addresses;
                var tcp = new Uri(addresses.Single(url => url.StartsWith("http://127.0.0.1:", StringComparison.Ordinal)));
                using (var client = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, tcp.Port)))
                {
                    Assert.Equal("hello", Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(client, Timeout)));
                }

                Assert.Equal(1, counters.ConnectionsAccepted);
                Assert.Equal(2, served.Count);
                Assert.Equal(typeof(WinsockTransportCounters).Assembly, served.Last().Assembly);
            }
            finally
            {
                await app.StopAsync(CancellationToken.None);
                File.Delete(path);
            }
        }

        async Task HelloAsync(ConnectionContext context)
        {
            served.Enqueue(context.GetType());
            await context.Transport.Output.WriteAsync("hello"u8.ToArray(), ct);
        }
    }

    [Fact]
    public async Task Unbind_with_a_token_already_canceled_still_unbinds_as_Kestrels_Sockets_transport_does()
    {
        await using var services = BuildServices();
        var listener = await BindAsync(services);
        var endPoint = (IPEndPoint)listener.EndPoint;

        await listener.UnbindAsync(new CancellationToken(canceled: true)).AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        var refused = await Assert.ThrowsAsync<SocketException>(async () => (await RawClient.ConnectAsync(endPoint)).Dispose());
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        await listener.DisposeAsync();
    }

    [Fact]
    public async Task A_host_disposed_without_a_stop_throws_nothing_and_closes_its_listener()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseWinsockReuseTransport();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        await app.StartAsync(TestContext.Current.CancellationToken);
        var port = new Uri(app.Urls.Single()).Port;

        await app.DisposeAsync();
        var refused = await Assert.ThrowsAsync<SocketException>(async () => (await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port))).Dispose());
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
    }

    [Fact(Skip = Ipv6Loopback.Unavailable, SkipUnless = nameof(Ipv6Loopback.IsAvailable), SkipType = typeof(Ipv6Loopback))]
    public async Task A_localhost_bind_that_fails_half_way_reports_the_address_in_use()
    {
        // [::1] on the port is taken, 127.0.0.1 is free: Kestrel binds the IPv4 half through this
        // transport, fails on the IPv6 half, and disposes what it bound with a canceled token.
        using var taken = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
        taken.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        taken.Listen();
        var port = ((IPEndPoint)taken.LocalEndPoint!).Port;

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseWinsockReuseTransport();
        builder.WebHost.UseUrls($"http://localhost:{port}");
        await using var app = builder.Build();
        var error = await Assert.ThrowsAnyAsync<Exception>(() => app.StartAsync(TestContext.Current.CancellationToken));

        Assert.IsNotType<TaskCanceledException>(error);
        Assert.IsNotType<OperationCanceledException>(error);
        Assert.Contains("address already in use", error.ToString(), StringComparison.OrdinalIgnoreCase);
        // And the IPv4 half is closed again.
        var refused = await Assert.ThrowsAsync<SocketException>(async () => (await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port))).Dispose());
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
    }

    internal static ServiceProvider BuildServices(Action<WinsockTransportOptions>? configure = null)
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddWinsockReuseTransport(configure ?? (static _ => { }));
        return services.BuildServiceProvider();
    }

    internal static async Task<IConnectionListener> BindAsync(IServiceProvider services)
        => await ((IConnectionListenerFactory)Ours(services)).BindAsync(new IPEndPoint(IPAddress.Loopback, 0), TestContext.Current.CancellationToken);

    /// <summary>This transport's factory (with no Kestrel in the services, Kestrel's Sockets transport is registered beside it).</summary>
    internal static IConnectionListenerFactorySelector Ours(IServiceProvider services)
        => Assert.Single(services.GetServices<IConnectionListenerFactory>().OfType<IConnectionListenerFactorySelector>(), f => f.GetType().Assembly == typeof(WinsockTransportCounters).Assembly);

    internal static async Task<ConnectionContext?> AcceptAsync(IConnectionListener listener)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Timeout);
        return await listener.AcceptAsync(cts.Token);
    }
}
