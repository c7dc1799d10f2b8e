using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Transport.Winsock;

namespace TransportBench;

/// <summary>
/// Builds a transport the way Kestrel gets it: the services of a host with <c>UseKestrel()</c>, plus our
/// transport or not, so both share Kestrel's registrations (memory pool factory, logging, options).
/// </summary>
internal sealed class Transports : IAsyncDisposable
{
    private readonly IHost _host;

    private Transports(IHost host, IConnectionListenerFactory factory)
    {
        _host = host;
        Factory = factory;
    }

    public IConnectionListenerFactory Factory { get; }

    /// <summary>Winsock counters when the winsock transport is registered; otherwise null.</summary>
    public WinsockTransportCounters? WinsockCounters => _host.Services.GetService<WinsockTransportCounters>();

    public static Transports Create(string transport, EndPoint endpoint)
    {
        var host = new HostBuilder()
            // No logging providers for either transport: nothing is formatted or written in the hot path.
            .ConfigureLogging(static logging => logging.ClearProviders())
            .ConfigureWebHost(web =>
            {
                web.UseKestrel();
                if (transport == "winsock")
                {
                    web.ConfigureServices(static services => services.AddWinsockReuseTransport());
                }

                // The host is never started; a web host only needs an application to build.
                web.Configure(static _ => { });
            })
            .Build();

        var factory = Select(host.Services, endpoint);
        var expected = transport == "winsock" ? "WinsockTransportFactory" : "SocketTransportFactory";
        if (factory.GetType().Name != expected)
        {
            host.Dispose();
            throw new InvalidOperationException($"Kestrel would bind {endpoint} with {factory.GetType().FullName}, not {expected}.");
        }

        var pools = host.Services.GetService<IMemoryPoolFactory<byte>>();
        Console.Error.WriteLine($"factory: {factory.GetType().FullName}");
        Console.Error.WriteLine($"memory pool factory: {pools?.GetType().FullName ?? "(none registered)"}");
        return new Transports(host, factory);
    }

    // Kestrel's TransportManager: registrations newest first, the first that can bind the endpoint wins.
    private static IConnectionListenerFactory Select(IServiceProvider services, EndPoint endpoint)
    {
        foreach (var factory in services.GetServices<IConnectionListenerFactory>().Reverse())
        {
            if (factory is not IConnectionListenerFactorySelector selector || selector.CanBind(endpoint))
            {
                return factory;
            }
        }

        throw new InvalidOperationException($"No IConnectionListenerFactory can bind {endpoint}.");
    }

    public async ValueTask DisposeAsync()
    {
        if (_host is IAsyncDisposable asyncDisposable)
        {
            await asyncDisposable.DisposeAsync().ConfigureAwait(false);
        }
        else
        {
            _host.Dispose();
        }
    }
}
